"""Table 1 (and its r / bias table), Table 2, plots and rebuilding the report from saved files alone."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from ctsl_hpc.data.conditions import CONDITIONS
from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.evaluate import diagnostics, report, table2
from ctsl_hpc.evaluate.predictions import ModelPredictions, read_predictions, save_predictions
from ctsl_hpc.evaluate.protocol import significance
from ctsl_hpc.evaluate.score_table import Scores
from ctsl_hpc.evaluate.tables import CONDITION_LABEL
from ctsl_hpc.workdir import ReportFiles

VARIANTS = ("original", "RH", "RM", "RM+TL", "RM+CL", "RM+TL+CL")
SYMBOL = {"original": "*", "RH": "†", "RM": "‡"}


def _scores(rng: np.random.Generator, models: int = 3, groups: int = 8) -> Scores:
    """Random CCCs whose true means differ between variants by random amounts (some clearly, some not)."""
    scores = Scores()
    for variant in VARIANTS:
        for condition in CONDITIONS:
            centre = rng.uniform(0.2, 0.6, size=3)
            spread = rng.uniform(0.005, 0.05, size=3)
            for model in range(models):
                for group in range(groups):
                    ccc, r, bias = rng.normal(centre, spread), rng.uniform(-1, 1, 3), rng.normal(0, 1.5, 3)
                    scores.add(variant, 2 * model + 1, condition, group, ccc, r, bias)
    return scores


def _parse_table(md: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return header, rows


def _cell(text: str) -> tuple[float, bool, set[str]]:
    """(value, bold, markers) of a rendered cell like ``**0.412**\\*‡``."""
    match = re.fullmatch(r"(\*\*)?(-?\d+\.\d{3})(?:\*\*)?((?:\\\*|†|‡)*)", text)
    assert match, f"unexpected cell {text!r}"
    markers = set(match.group(3).replace("\\*", "*"))
    return float(match.group(2)), match.group(1) is not None, markers


@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_table1_has_every_cell_bold_maxima_and_markers_exactly_where_significant(
    tmp_path: Path, alpha: float, rng: np.random.Generator
) -> None:
    scores = _scores(rng)
    md_path, json_path, _ = report.write_table1(scores, tmp_path, alpha=alpha)
    header, rows = _parse_table(md_path.read_text())
    data = json.loads(json_path.read_text())
    columns = [(c, a) for c in ("snr0", "snr5", "snr10", "clean") for a in ATTRIBUTES]
    assert header == ["model"] + [f"{CONDITION_LABEL[c]} {a[0].upper()}" for c, a in columns]
    assert list(rows) == list(VARIANTS)
    n_markers = 0
    for index, (condition, attribute) in enumerate(columns):
        column_best = max(data[v][condition][attribute]["mean"] for v in VARIANTS)
        for variant in VARIANTS:
            value, bold, markers = _cell(rows[variant][index])
            cell = data[variant][condition][attribute]
            assert value == pytest.approx(cell["mean"], abs=5e-4)
            assert bold == (cell["mean"] == column_best)
            expected = {SYMBOL[b] for b, p in cell["p"].items() if p is not None and p <= alpha}
            assert markers == expected
            n_markers += len(markers)
    assert n_markers > 0, "fixture should produce some significant comparisons"
    assert "p <= " + f"{alpha:g}" in md_path.read_text()


def test_table1_json_keeps_mean_std_n_p_r_and_bias_of_every_cell(tmp_path: Path, rng: np.random.Generator) -> None:
    scores = _scores(rng, models=3, groups=5)
    _, json_path, _ = report.write_table1(scores, tmp_path)
    data = json.loads(json_path.read_text())
    assert list(data) == list(VARIANTS)
    for variant in VARIANTS:
        assert list(data[variant]) == list(CONDITIONS)
        for condition in CONDITIONS:
            assert list(data[variant][condition]) == list(ATTRIBUTES)
            for attribute in ATTRIBUTES:
                cell = data[variant][condition][attribute]
                values = scores.values(variant, condition, attribute)
                assert set(cell) == {"mean", "std", "n", "p", "r", "bias"}
                assert cell["n"] == 15
                assert cell["mean"] == pytest.approx(values.mean(), rel=1e-12)
                assert cell["std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
                marked = {"original"} if variant in ("RH", "RM") else {"original", "RH", "RM"}  # the paper's markers
                assert set(cell["p"]) == marked & set(VARIANTS[: VARIANTS.index(variant)])
                for metric in ("r", "bias"):
                    diag = scores.values(variant, condition, attribute, metric)
                    assert cell[metric]["mean"] == pytest.approx(diag.mean(), rel=1e-12)
                    assert cell[metric]["std"] == pytest.approx(diag.std(ddof=1), rel=1e-12)
    assert data == report.table1_json(significance(scores))


def test_table1_writes_null_for_undefined_statistics(tmp_path: Path) -> None:
    scores = Scores()
    scores.add("original", 1, "snr0", 0, [0.1, 0.2, 0.3])
    scores.add("RM", 1, "snr0", 0, [0.3, 0.3, 0.4])
    scores.add("RM", 3, "snr0", 0, [0.4, 0.2, 0.5])
    md_path, json_path, _ = report.write_table1(scores, tmp_path)
    data = json.loads(json_path.read_text())  # strict JSON: no NaN tokens
    assert data["original"]["snr0"]["arousal"]["std"] is None
    assert data["original"]["snr0"]["arousal"]["r"] == {"mean": None, "std": None}  # not recorded
    assert data["RM"]["snr0"]["arousal"]["p"] == {"original": None}
    _, rows = _parse_table(md_path.read_text())
    assert rows["RM"][:3] == ["**0.350**", "**0.250**", "**0.450**"]
    assert rows["RM"][3:] == ["—"] * 9  # conditions that were not scored


def _emb_metrics(rng: np.random.Generator) -> dict[str, dict[str, dict[str, float]]]:
    anchors = int(rng.integers(1, 90))
    return {
        v: {
            c: {"rmse": rng.uniform(0.1, 1), "cosine": rng.uniform(0, 1), "infonce": rng.uniform(1, 4), "anchors": anchors}
            for c in CONDITIONS
        }
        for v in VARIANTS
    }


def test_table2_round_trips_and_bolds_the_best_of_each_metric(tmp_path: Path, rng: np.random.Generator) -> None:
    metrics = _emb_metrics(rng)
    md_path, json_path = table2.write_table2(metrics, tmp_path)
    assert table2.read_table2_json(json_path) == metrics
    header, rows = _parse_table(md_path.read_text())
    assert len(header) == 1 + 4 * 3 and list(rows) == list(VARIANTS)
    columns = [(c, m) for c in ("snr0", "snr5", "snr10", "clean") for m in ("rmse", "cosine", "infonce")]
    for index, (condition, metric) in enumerate(columns):
        values = {v: metrics[v][condition][metric] for v in VARIANTS}
        best = (max if metric == "cosine" else min)(values, key=values.get)
        for variant in VARIANTS:
            value, bold, markers = _cell(rows[variant][index])
            assert value == pytest.approx(values[variant], abs=5e-4) and not markers
            assert bold == (variant == best)
    assert f"InfoNCE anchors (utterances with a valid negative in their batch): {metrics['RM']['snr0']['anchors']}." in md_path.read_text()


def test_table2_without_any_anchor_has_no_infonce_and_older_files_have_no_count(tmp_path: Path) -> None:
    metrics = {"original": {"snr0": {"rmse": 0.5, "cosine": 0.9, "infonce": math.nan, "anchors": 0}}}
    md_path, json_path = table2.write_table2(metrics, tmp_path)
    assert json.loads(json_path.read_text())["original"]["snr0"]["infonce"] is None
    assert _parse_table(md_path.read_text())[1]["original"] == ["**0.500**", "**0.900**", "—"]
    old = {"RM": {"clean": {"rmse": 0.5, "cosine": 0.9, "infonce": 2.0}}}  # written before anchors were counted
    json_path.write_text(json.dumps(old))
    assert table2.read_table2_json(json_path) == old


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({}, "no embedding metrics"),
        ({"RM": {"snr3": {"rmse": 1.0, "cosine": 0.5, "infonce": 2.0}}}, "RM/snr3: unknown condition"),
        ({"RM": {"snr0": {"rmse": 1.0, "cosine": 0.5}}}, "RM/snr0: expected keys"),
        ({"RM": {"snr0": {"rmse": math.nan, "cosine": 0.5, "infonce": 2.0}}}, "RM/snr0/rmse"),
        ({"RM": {"snr0": {"rmse": 1.0, "cosine": 0.5, "infonce": math.nan, "anchors": 3}}}, "RM/snr0/infonce"),
        ({"RM": {"snr0": {"rmse": 1.0, "cosine": 0.5, "infonce": 2.0, "anchors": -1}}}, "RM/snr0/anchors"),
    ],
)
def test_table2_rejects_bad_metrics(tmp_path: Path, metrics: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        table2.write_table2(metrics, tmp_path)


def test_diagnostics_table_shows_r_and_bias_of_every_cell(tmp_path: Path, rng: np.random.Generator) -> None:
    scores = _scores(rng, models=2, groups=3)
    _, json_path, md_path = report.write_table1(scores, tmp_path)
    assert md_path == ReportFiles(tmp_path).diagnostics_md
    data = json.loads(json_path.read_text())
    header, rows = _parse_table(md_path.read_text())
    columns = [(c, a) for c in ("snr0", "snr5", "snr10", "clean") for a in ATTRIBUTES]
    assert header[1:] == [f"{CONDITION_LABEL[c]} {a[0].upper()}" for c, a in columns] and list(rows) == list(VARIANTS)
    for variant in VARIANTS:
        for index, (condition, attribute) in enumerate(columns):
            r_text, bias_text = rows[variant][index].split(" / ")
            assert float(r_text) == pytest.approx(data[variant][condition][attribute]["r"]["mean"], abs=5e-4)
            assert float(bias_text) == pytest.approx(data[variant][condition][attribute]["bias"]["mean"], abs=5e-3)


def _predictions(rng: np.random.Generator, n: int = 40) -> dict[str, dict[int, ModelPredictions]]:
    labels = rng.uniform(1, 7, size=(n, 3)).astype(np.float32)
    found = {}
    for variant, epochs in (("original", (2, 5)), ("RM", (1,)), ("RM+TL", (3,))):
        found[variant] = {}
        for epoch in epochs:
            saved = ModelPredictions(labels)
            for condition in CONDITIONS:
                for group, part in enumerate(np.array_split(rng.permutation(n), 2)):
                    saved.add(condition, group, part, labels[part] + rng.normal(-1.0, 0.5, (part.size, 3)))
            found[variant][epoch] = saved
    return found


def test_predictions_round_trip_and_plot_original_and_the_best_student_at_0db(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    files = ReportFiles(tmp_path)
    predictions = _predictions(rng)
    for variant, by_epoch in predictions.items():
        for epoch, saved in by_epoch.items():
            save_predictions(files.prediction_file(variant, epoch), saved)
    loaded = read_predictions(files)
    assert {v: list(e) for v, e in loaded.items()} == {"RM": [1], "RM+TL": [3], "original": [2, 5]}
    for (condition, group), (indices, pred) in predictions["RM+TL"][3].groups.items():
        got_indices, got_pred = loaded["RM+TL"][3].groups[condition, group]
        np.testing.assert_array_equal(got_indices, indices)
        np.testing.assert_array_equal(got_pred, pred)
    scores = Scores()
    for variant, level in (("original", 0.2), ("RM", 0.3), ("RM+TL", 0.5)):
        scores.add(variant, 1, "snr0", 0, [level] * 3)
    assert diagnostics.plotted_models(significance(scores), loaded) == ["original", "RM+TL"]
    _assert_png(diagnostics.plot_predictions(loaded, ["original", "RM+TL"], files.prediction_plot))


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.01, "the plot is blank"


def test_ccc_vs_snr_plot_is_a_non_empty_png(tmp_path: Path, rng: np.random.Generator) -> None:
    path = report.plot_ccc_vs_snr(_scores(rng, groups=3), tmp_path / "plots" / "ccc.png")
    _assert_png(path)


def test_embedding_projection_plot_and_npz_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    teacher = rng.normal(size=(300, 16))
    students = {
        "original": teacher + rng.normal(0, 1.0, size=teacher.shape),
        "RM+TL+CL": teacher + rng.normal(0, 0.2, size=teacher.shape),
    }
    npz = report.save_projection(teacher, students, tmp_path / ReportFiles.PROJECTION_NPZ)
    loaded_teacher, loaded_students = report.load_projection(npz)
    np.testing.assert_allclose(loaded_teacher, teacher, rtol=1e-6)
    assert list(loaded_students) == ["original", "RM+TL+CL"]
    np.testing.assert_allclose(loaded_students["RM+TL+CL"], students["RM+TL+CL"], rtol=1e-6)
    _assert_png(report.plot_embedding_projection(teacher, students, tmp_path / "proj.png", max_points=100))


def test_embedding_projection_rejects_mismatched_dimensions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'RM'"):
        report.plot_embedding_projection(np.zeros((5, 4)), {"RM": np.zeros((5, 3))}, tmp_path / "p.png")


def test_build_report_from_scores_csv_alone(tmp_path: Path, rng: np.random.Generator) -> None:
    scores = _scores(rng, groups=4)
    scores.write_csv(tmp_path / ReportFiles.SCORES_CSV)
    expected_dir = tmp_path / "in_memory"
    report.write_table1(scores, expected_dir, alpha=0.1)
    written = report.build_report(tmp_path, alpha=0.1)
    assert {p.name for p in written} == {ReportFiles.TABLE1_MD, ReportFiles.TABLE1_JSON, ReportFiles.DIAGNOSTICS_MD, ReportFiles.CCC_PLOT}
    assert (tmp_path / ReportFiles.TABLE1_MD).read_text() == (expected_dir / ReportFiles.TABLE1_MD).read_text()
    rebuilt = json.loads((tmp_path / ReportFiles.TABLE1_JSON).read_text())
    assert rebuilt == json.loads((expected_dir / ReportFiles.TABLE1_JSON).read_text())
    _assert_png(tmp_path / ReportFiles.CCC_PLOT)


def test_build_report_also_renders_saved_embedding_results(tmp_path: Path, rng: np.random.Generator) -> None:
    _scores(rng, groups=2).write_csv(tmp_path / ReportFiles.SCORES_CSV)
    metrics = _emb_metrics(rng)
    table2.write_table2(metrics, tmp_path)
    (tmp_path / ReportFiles.TABLE2_MD).unlink()
    report.save_projection(rng.normal(size=(50, 8)), {"RM": rng.normal(size=(50, 8))}, tmp_path / ReportFiles.PROJECTION_NPZ)
    for variant, by_epoch in _predictions(rng).items():
        for epoch, saved in by_epoch.items():
            save_predictions(ReportFiles(tmp_path).prediction_file(variant, epoch), saved)
    written = {p.name for p in report.build_report(tmp_path)}
    assert {ReportFiles.TABLE2_MD, ReportFiles.TABLE2_JSON, ReportFiles.PROJECTION_PLOT, ReportFiles.PREDICTION_PLOT} <= written
    assert "InfoNCE" in (tmp_path / ReportFiles.TABLE2_MD).read_text()
    _assert_png(tmp_path / ReportFiles.PROJECTION_PLOT)
    _assert_png(tmp_path / ReportFiles.PREDICTION_PLOT)


def test_build_report_without_scores_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="scores.csv"):
        report.build_report(tmp_path)


def test_rm_rows_carry_no_dagger_the_paper_marks_rm_against_original_only(tmp_path: Path, rng: np.random.Generator):
    scores = Scores()
    for variant, centre in (("original", 0.2), ("RH", 0.3), ("RM", 0.8), ("RM+TL", 0.9)):
        for group in range(6):
            scores.add(variant, 1, "snr0", group, centre + rng.normal(0, 0.01, 3))
    md, _, _ = report.write_table1(scores, tmp_path)
    rows = {line.split("|")[1].strip(): line for line in md.read_text().splitlines() if line.startswith("| R")}
    assert "\\*" in rows["RM"] and "†" not in rows["RM"] and "‡" not in rows["RM"]  # far above RH, yet no †
    assert "†" in rows["RM+TL"] and "‡" in rows["RM+TL"]
