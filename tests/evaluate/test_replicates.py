"""Table 1 over replicate seeds: the Welch tests within each seed on its own scores, the means over seeds, the
markers counting the seeds; and a 2-seed tiny sweep end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctsl_hpc.data.conditions import CONDITIONS
from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.evaluate.protocol import significance
from ctsl_hpc.evaluate.replicates import averaged_table2, combined_markdown, combined_table1
from ctsl_hpc.evaluate.score_table import Scores


def _scores(rng: np.random.Generator, shift: float) -> Scores:
    """Random per-group scores of original, RH and RM (RM better by ``shift``)."""
    scores = Scores()
    for variant, offset in (("original", 0.0), ("RH", 0.02), ("RM", shift)):
        for condition in CONDITIONS:
            for group in range(6):
                scores.add(variant, 1, condition, group, rng.normal(0.3 + offset, 0.02, len(ATTRIBUTES)).tolist())
    return scores


def test_the_combined_table_is_the_mean_of_the_seeds_tables_and_its_markers_count_the_seeds(rng):
    per_seed = {0: _scores(rng, 0.2), 1: _scores(rng, -0.2)}  # RM beats original clearly in seed 0 only
    combined = combined_table1(per_seed, alpha=0.05)
    tables = {seed: significance(scores, alpha=0.05) for seed, scores in per_seed.items()}
    for variant, by_condition in combined.items():
        for condition, cells in by_condition.items():
            for attribute, cell in cells.items():
                means = [tables[s][variant][condition][attribute].mean for s in per_seed]
                assert cell.mean == pytest.approx(np.mean(means), abs=1e-9)
                assert cell.spread == pytest.approx(np.std(means, ddof=1), abs=1e-9)
                counted = sum(tables[s][variant][condition][attribute].significant.get("original", False) for s in per_seed)
                assert cell.significant.get("original", 0) == counted
    assert {c.significant["original"] for cells in combined["RM"].values() for c in cells.values()} == {1}
    text = combined_markdown(combined, 0.05, [0, 1])
    assert "\\*1/2" in text and "Mean over 2 seeds (0, 1)" in text


def test_table2_is_averaged_over_the_seeds_leaving_out_what_a_seed_lacks():
    first = {"RM": {"snr0": {"rmse": 1.0, "cosine": 0.5, "infonce": None, "anchors": 10}}}
    second = {"RM": {"snr0": {"rmse": 3.0, "cosine": 0.7, "infonce": 2.0, "anchors": 13}}}
    assert averaged_table2([first, second]) == {"RM": {"snr0": {
        "rmse": 2.0, "cosine": pytest.approx(0.6), "infonce": 2.0, "anchors": 12}}}


@pytest.mark.slow
def test_a_two_seed_sweep_runs_a_replicate_per_seed_and_combines_their_tables(tiny_overrides, tmp_path):
    from mlflow import MlflowClient

    from ctsl_hpc.workdir import Workdir
    from tests.helpers import cli

    workdir = Workdir(tmp_path / "w")
    overrides = [*tiny_overrides(workdir.root), "seeds=[0,1]", "student.variants=[RM]"]
    dry = cli("sweep", "--dry-run", *overrides, check=True).stdout
    assert "teacher: submit [seed-0/original, seed-1/original]" in dry and "x 2 seeds" in dry
    out = cli("sweep", *overrides, check=True)
    assert "Mean over 2 seeds (0, 1)" in out.stdout
    combined = json.loads(workdir.report.table1_json.read_text())
    seeds = {s: json.loads(workdir.replicate(s).report.table1_json.read_text()) for s in (0, 1)}
    assert combined["seeds"] == [0, 1] and set(combined["table"]) == {"original", "RM"}
    for variant, by_condition in combined["table"].items():
        for condition, cells in by_condition.items():
            for attribute, cell in cells.items():
                means = [seeds[s][variant][condition][attribute]["mean"] for s in (0, 1)]
                assert cell["mean"] == pytest.approx(np.mean(means), abs=1e-9)  # from each seed's own scores
                marked = sum(bool(seeds[s][variant][condition][attribute]["p"].get("original") is not None
                                  and seeds[s][variant][condition][attribute]["p"]["original"] <= 0.05) for s in (0, 1))
                assert cell["significant_in_seeds"].get("original", 0) == marked
    assert workdir.report.table2_json.is_file() and all(workdir.replicate(s).report.table2_json.is_file() for s in (0, 1))
    assert (workdir.replicate(0).root / "data").resolve() == (workdir.root / "data").resolve()  # prepared once
    client = MlflowClient(f"sqlite:///{workdir.mlflow_db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    names = {r.info.run_name for r in runs}
    assert {"seed-0/teacher", "seed-1/teacher", "seed-0/student/RM", "seed-1/student/RM"} <= names
    parent = next(r for r in runs if r.info.run_name.startswith("sweep "))
    assert parent.info.status == "FINISHED" and "Mean over 2 seeds" in parent.data.tags["mlflow.note.content"]
