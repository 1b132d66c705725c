"""`python -m ctsl_hpc.launch report` rebuilds Table 1, Table 2 and the plots from saved files alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from ctsl_hpc.evaluate import report
from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.model import WEIGHTS_FILE
from ctsl_hpc.workdir import ReportFiles

REBUILT = (
    ReportFiles.TABLE1_MD, ReportFiles.TABLE1_JSON, ReportFiles.DIAGNOSTICS_MD, ReportFiles.TABLE2_MD,
    ReportFiles.CCC_PLOT, ReportFiles.PROJECTION_PLOT, ReportFiles.PREDICTION_PLOT,
)  # fmt: skip


@pytest.fixture(scope="module")
def swept(tiny_overrides, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report-sweep")
    overrides = [*tiny_overrides(workdir), "train.epochs=1", "student.epochs=1", "tracking.enabled=false"]
    assert main(["sweep", *overrides]) == 0
    return workdir


@pytest.mark.slow
def test_report_rebuilds_tables_and_plots_without_any_model(swept, capsys):
    out = swept / "report"
    kept = (ReportFiles.TABLE1_MD, ReportFiles.TABLE1_JSON, ReportFiles.DIAGNOSTICS_MD, ReportFiles.TABLE2_MD)
    saved = {name: (out / name).read_bytes() for name in kept}
    for name in REBUILT:
        (out / name).unlink()
    weights = list(swept.rglob(WEIGHTS_FILE))
    assert weights
    for path in weights:  # nothing may be recomputed from a model
        path.unlink()
    capsys.readouterr()

    assert main(["report", "--workdir", str(swept)]) == 0
    printed = capsys.readouterr().out
    for name in REBUILT:
        assert (out / name).is_file() and str(out / name) in printed, name
    assert json.loads((out / ReportFiles.TABLE1_JSON).read_bytes()) == json.loads(saved[ReportFiles.TABLE1_JSON])
    assert (out / ReportFiles.TABLE1_MD).read_bytes() == saved[ReportFiles.TABLE1_MD]
    assert (out / ReportFiles.TABLE2_MD).read_bytes() == saved[ReportFiles.TABLE2_MD]
    assert (out / ReportFiles.DIAGNOSTICS_MD).read_bytes() == saved[ReportFiles.DIAGNOSTICS_MD]
    for plot in (ReportFiles.CCC_PLOT, ReportFiles.PROJECTION_PLOT, ReportFiles.PREDICTION_PLOT):
        image = imread(out / plot)
        assert image.shape[0] > 300 and image.shape[1] > 300 and np.std(image[..., :3]) > 0.05, plot


@pytest.mark.slow
def test_projection_holds_the_teacher_the_original_and_one_best_student(swept):
    teacher, students = report.load_projection(swept / "report" / ReportFiles.PROJECTION_NPZ)
    assert len(students) == 2 and next(iter(students)) == "original"
    assert all(values.shape == teacher.shape for values in students.values())
