"""Reviewing a finished sweep in MLflow: a real server, a tiny sweep, headless Chromium, predict from the registry.

The sweep runs once per module (about half a minute). The browser opens the experiment from the link
the sweep prints (its training runs, not the GenAI overview), finds the datasets of the runs, Table 1
and the stages in the sweep run's description, a student's description, and the registered models;
``predict`` with ``models:/<experiment>-<variant>@best`` gives the numbers the model folder gives.
Screenshots go to the test's tmp dir (and ``$CTSL_TEST_ARTIFACTS`` when set).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mlflow import MlflowClient

from ctsl_hpc.data.corpus import ATTRIBUTES, load_csv_manifest
from ctsl_hpc.evaluate.protocol import select_checkpoints
from ctsl_hpc.evaluate.report import PAPER_CONDITION_ORDER
from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.stage_jobs import evaluate_job
from ctsl_hpc.track.registry import BEST_ALIAS, EPOCH_TAG, model_name
from ctsl_hpc.track.server import training_runs_url
from ctsl_hpc.workdir import Workdir
from tests.chromium import Page, open_page

if TYPE_CHECKING:
    from tests.mlflow_fixtures import MlflowServer


VARIANTS = ["original", "RM+TL+CL"]
EXPAND_PARENTS = """(() => { const b = document.querySelectorAll('button[data-component-id*="runnamecellrenderer"]');
  b.forEach((x) => x.click()); return b.length; })()"""
TABLE_ROWS = "[...document.querySelectorAll('table tr')].map((tr) => [...tr.cells].map((c) => c.innerText.trim()))"


@pytest.fixture(scope="module")
def reviewed(mlflow_server: MlflowServer, tiny_overrides, tmp_path_factory):
    """(experiment, work directory, its printed lines) of a tiny sweep tracked on the server."""
    experiment = f"review-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("review") / "w"
    args = ["sweep", *tiny_overrides(workdir), f"name={experiment}", f"tracking.uri={mlflow_server.url}",
            "student.variants=[RM+TL+CL]"]  # fmt: skip
    assert main(args) == 0
    return experiment, Workdir(workdir)


def _save(png: Path) -> None:
    if os.environ.get("CTSL_TEST_ARTIFACTS"):
        Path(os.environ["CTSL_TEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(os.environ["CTSL_TEST_ARTIFACTS"]) / png.name)


async def _read(page: Page, texts: list[str], png: Path) -> str:
    """The page's text once it shows ``texts`` (bounded wait), with a screenshot."""
    text = await page.wait_for_text(texts, timeout_s=30)
    await page.screenshot(png)
    _save(png)
    return text


async def _open(page: Page, url: str, texts: list[str], png: Path) -> str:
    await page.goto(url)
    return await _read(page, texts, png)


async def _review(url: str, run_page: str, student_page: str, models_page: str, tmp: Path) -> dict:
    """What the browser shows on the runs table, the sweep's run page, a student's run page and the registry."""
    seen = {}
    async with open_page(tmp / "chromium-profile", width=1600, height=1000) as page:
        await page.goto(url)
        await page.wait_for_text(["sweep w"], timeout_s=30)
        seen["runs_location"] = await page.evaluate("location.href")
        assert await page.evaluate(EXPAND_PARENTS) >= 1, "no expandable sweep run"
        seen["runs"] = await _read(page, ["student/RM+TL+CL", "teacher", "csv corpus ("], tmp / "review-runs.png")
        seen["sweep"] = await _open(page, run_page, ["Table 1", "Stages"], tmp / "review-sweep.png")
        seen["sweep_rows"] = await page.evaluate(TABLE_ROWS)
        seen["student"] = await _open(page, student_page, ["0 dB gain over original"], tmp / "review-student.png")
        seen["models"] = await _open(page, models_page, ["RM+TL+CL", BEST_ALIAS], tmp / "review-models.png")
    return seen


def test_the_sweep_is_reviewed_in_the_browser(mlflow_server: MlflowServer, reviewed, tmp_path: Path):
    experiment, workdir = reviewed
    client = MlflowClient(mlflow_server.url)
    found = client.get_experiment_by_name(experiment)
    runs = {r.info.run_name: r for r in client.search_runs([found.experiment_id])}
    parent, student = runs[f"sweep {workdir.root.name}"], runs["student/RM+TL+CL"]
    base = f"{mlflow_server.url}/#/experiments/{found.experiment_id}/runs"
    seen = asyncio.run(_review(
        training_runs_url(mlflow_server.url, experiment),
        f"{base}/{parent.info.run_id}?workflowType=machine_learning",
        f"{base}/{student.info.run_id}?workflowType=machine_learning",
        f"{mlflow_server.url}/#/models",
        tmp_path,
    ))  # fmt: skip

    assert "/runs" in seen["runs_location"] and "overview" not in seen["runs_location"], seen["runs_location"]
    for dataset in student.inputs.dataset_inputs:  # the Dataset column: name (digest) of what each run saw
        assert f"{dataset.dataset.name} ({dataset.dataset.digest})" in seen["runs"], dataset.dataset.name
    assert {d.dataset.name for d in student.inputs.dataset_inputs} == {"csv corpus", "train noise", "dev noise",
                                                                          "test noise"}  # fmt: skip
    assert {d.dataset.name for d in runs["teacher"].inputs.dataset_inputs} == {"csv corpus", "test noise"}

    table1 = json.loads(workdir.report.table1_json.read_text())
    rows = {row[0]: row[1:] for row in seen["sweep_rows"] if row}
    for variant in VARIANTS:  # Table 1's rows, rendered: each cell starts with the mean (markers may follow)
        expected = [f"{table1[variant][c][a]['mean']:.3f}" for c in PAPER_CONDITION_ORDER for a in ATTRIBUTES]
        assert len(rows[variant]) == len(expected), rows.get(variant)
        cells = zip(rows[variant], expected, strict=True)
        assert all(cell.startswith(mean) for cell, mean in cells), (rows[variant], expected)
    summary = workdir.student("RM+TL+CL").summary()
    status = f"done (best epoch {summary.best_epoch}, dev CCC {summary.dev_scores[summary.best_epoch]:.3f})"
    assert rows["student/RM+TL+CL"] == [status, "—"]
    assert rows["eval"][0] == "report built"
    assert "lambda_tl = 100, lambda_cl = 10" in seen["student"] and f"{summary.best_epoch} (dev CCC" in seen["student"]
    for variant in VARIANTS:
        assert model_name(experiment, variant) in seen["models"]


def test_selected_models_are_registered_once_and_predict_reads_them_from_the_registry(
    mlflow_server: MlflowServer, reviewed, small_corpus, tmp_path: Path
):
    experiment, workdir = reviewed
    client = MlflowClient(mlflow_server.url)

    def versions() -> dict[str, list]:
        return {v: client.search_model_versions(f"name = '{model_name(experiment, v)}'") for v in VARIANTS}

    registered = versions()
    top_k = workdir.read_config().eval.top_k
    for variant, found in registered.items():
        summary = workdir.run(variant).summary()
        assert sorted(int(v.tags[EPOCH_TAG]) for v in found) == sorted(select_checkpoints(summary.dev_scores, top_k))
        best = client.get_model_version_by_alias(model_name(experiment, variant), BEST_ALIAS)
        assert best.tags[EPOCH_TAG] == str(summary.best_epoch)

    evaluate_job(workdir.root)  # the evaluation again: the same selection, no second version
    assert {v: sorted(x.version for x in found) for v, found in versions().items()} == {
        v: sorted(x.version for x in found) for v, found in registered.items()
    }
    found = client.get_experiment_by_name(experiment)
    parent = client.search_runs([found.experiment_id], "tags.`ctsl.run_key` = 'parent'")[0]
    client.set_tag(parent.info.run_id, "mlflow.note.content", "stale")
    assert main(["report", "--workdir", str(workdir.root)]) == 0  # a rebuilt report rewrites the description
    note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert "| RM+TL+CL |" in note and "| eval | done | — |" in note

    audio = [str(u.path) for u in load_csv_manifest(small_corpus.manifest)["test"][:3]]
    folder = workdir.student("RM+TL+CL").summary().best_dir
    uri = f"models:/{model_name(experiment, 'RM+TL+CL')}@{BEST_ALIAS}"
    assert main(["predict", "--model", str(folder), *audio, "--out", str(tmp_path / "folder.csv")]) == 0
    assert main(["predict", "--model", uri, "--tracking-uri", mlflow_server.url, *audio,
                 "--out", str(tmp_path / "registry.csv")]) == 0  # fmt: skip
    from_folder, from_registry = (tmp_path / "folder.csv").read_text(), (tmp_path / "registry.csv").read_text()
    assert from_folder.count("\n") > len(audio) and from_registry == from_folder
