"""The main job end to end: `python -m ctsl_hpc.launch sweep` on a small corpus, rerun, bad input."""

from __future__ import annotations

import csv
import json

import pytest

from ctsl_hpc.launch.__main__ import main

VARIANTS = ["original", "RH", "RM", "RM+TL", "RM+CL", "RM+TL+CL"]


@pytest.fixture(scope="module")
def swept(tiny_overrides, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    assert main(["sweep", *tiny_overrides(workdir)]) == 0
    return workdir


@pytest.mark.slow
def test_sweep_trains_six_models_and_writes_table1(swept, capsys):
    table = json.loads((swept / "report" / "table1.json").read_text())
    assert list(table) == VARIANTS
    for variant in VARIANTS:
        assert set(table[variant]) == {"clean", "snr10", "snr5", "snr0"}
        for cells in table[variant].values():
            assert set(cells) == {"arousal", "dominance", "valence"}
            assert all(-1 <= c["mean"] <= 1 for c in cells.values())
    for name in ("table1.md", "table2.md", "table2.json", "scores.csv", "ccc_vs_snr.png", "embedding_projection.png",
                 "diagnostics.md", "pred_vs_true.png"):
        assert (swept / "report" / name).is_file(), name
    assert sorted((swept / "report" / "predictions").glob("*/epoch-*.npz")), "the scored checkpoints' predictions"


@pytest.mark.slow
def test_rerunning_the_same_sweep_reuses_everything(swept, tiny_overrides, capsys):
    markers = {p: p.stat().st_mtime_ns for p in swept.rglob("DONE")}
    checkpoints = sorted(p.name for p in swept.rglob("step-*"))
    assert len(markers) == 7  # six trained models and the report
    assert main(["sweep", *tiny_overrides(swept)]) == 0
    assert {p: p.stat().st_mtime_ns for p in swept.rglob("DONE")} == markers
    assert sorted(p.name for p in swept.rglob("step-*")) == checkpoints
    out = capsys.readouterr().out
    assert "| RM+TL+CL |" in out and f"work directory: {swept}" in out


@pytest.mark.slow
def test_resume_runs_where_the_sweep_was_started_and_status_speaks_json(swept, capsys):
    import json

    assert main(["resume", "--workdir", str(swept)]) == 0  # a local sweep resumes here: no Slurm asked for
    out = capsys.readouterr().out
    assert "| RM+TL+CL |" in out and f"work directory: {swept}" in out
    assert main(["status", "--workdir", str(swept), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {job["stage"] for job in status["jobs"]} == {"prepare", "teacher", "students", "eval"}
    assert {job["state"] for job in status["jobs"]} == {"COMPLETED"} and "trials" not in status


def test_a_workdir_made_with_another_config_is_refused(swept, tiny_overrides, capsys):
    assert main(["sweep", *tiny_overrides(swept), "student.lambda_tl=5"]) == 2
    assert "student.lambda_tl" in capsys.readouterr().err


def test_nan_label_stops_before_training_naming_file_and_field(small_corpus, tiny_overrides, tmp_path, capsys):
    rows = list(csv.DictReader(small_corpus.manifest.open()))
    rows[3]["valence"] = "nan"
    bad = tmp_path / "manifest.csv"
    for row in rows:
        row["path"] = str(small_corpus.manifest.parent / row["path"])
    with bad.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["sweep", *tiny_overrides(tmp_path / "w"), f"data.manifest={bad}"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "valence" in err
    assert not (tmp_path / "w" / "teacher" / "checkpoints").exists()


def test_an_empty_noise_folder_is_reported_by_name(tiny_overrides, tmp_path, capsys):
    empty = tmp_path / "no-noise"
    empty.mkdir()
    assert main(["sweep", *tiny_overrides(tmp_path / "w"), f"noise.train={empty}", "tracking.enabled=false"]) == 2
    assert str(empty) in capsys.readouterr().err
