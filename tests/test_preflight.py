"""The checks before the queue: every input looked at without decoding, one line per problem naming the key
and the path, in a fraction of a second for a small corpus."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from ctsl_hpc.config import load_config
from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.preflight import input_problems


@pytest.fixture
def inputs(small_corpus, tmp_path):
    """A private copy of the small corpus (manifest, audio, noise) that a test may damage, and its overrides."""
    root = tmp_path / "corpus"
    shutil.copytree(Path(small_corpus.manifest).parent, root)
    folders = {split: root / "noise" / split for split in ("train", "dev", "test")}
    overrides = ["data.corpus=csv", f"data.manifest={root / 'manifest.csv'}", *(f"noise.{s}={f}" for s, f in folders.items()),
                 f"workdir={tmp_path / 'work'}", "model.backbone=tiny"]
    return root, folders, overrides


def _rows(manifest: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(manifest.open()))


def test_sound_inputs_have_no_problem(inputs):
    _, _, overrides = inputs
    assert input_problems(load_config(None, overrides)) == []


def test_missing_audio_files_are_counted_and_the_first_few_named(inputs):
    root, _, overrides = inputs
    rows = _rows(root / "manifest.csv")
    for row in rows[:5]:
        (root / row["path"]).unlink()
    (problem,) = input_problems(load_config(None, overrides))
    assert problem.startswith(f"data.manifest: {root / 'manifest.csv'}: 5 of {len(rows)} listed audio file(s) not found: ")
    assert all(row["path"] in problem for row in rows[:3]) and problem.endswith("and 2 more")


def test_every_problem_is_one_line_naming_its_key_and_path(inputs, tmp_path):
    root, folders, overrides = inputs
    shutil.rmtree(folders["dev"])
    for wav in folders["test"].iterdir():
        wav.unlink()
    backbone = tmp_path / "backbone"
    backbone.mkdir()
    (backbone / "config.json").write_text("{}")  # a config without weights
    noisy = tmp_path / "noisy0"
    shutil.copytree(root / "audio", noisy)
    test_rows = [r for r in _rows(root / "manifest.csv") if r["split"] == "test"]
    (noisy / Path(test_rows[0]["path"]).name).unlink()
    cfg = load_config(None, [*overrides, f"model.backbone={backbone}", f"eval.noisy_roots={{snr0: {noisy}}}"])
    problems = input_problems(cfg)
    assert problems == [
        f"noise.dev: {folders['dev']}: not a folder",
        f"noise.test: {folders['test']}: holds no audio file",
        f"eval.noisy_roots.snr0: {noisy} lacks 1 of the {len(test_rows)} test utterances: {Path(test_rows[0]['path']).name}",
        f"model.backbone: {backbone} has a config.json but no weights (model.safetensors, pytorch_model.bin)",
    ]


def test_noise_folders_that_share_a_file_are_refused(inputs):
    _, folders, overrides = inputs
    nested = folders["train"] / "dev-inside-train"
    shutil.copytree(folders["dev"], nested)
    cfg = load_config(None, [o for o in overrides if not o.startswith("noise.dev")] + [f"noise.dev={nested}"])
    (problem,) = input_problems(cfg)
    assert problem.startswith(f"noise.dev: {nested} shares ") and "with noise.train" in problem


def test_the_dry_run_and_the_sweep_exit_2_with_a_line_per_problem_and_make_nothing(inputs, capsys):
    root, folders, overrides = inputs
    shutil.rmtree(folders["train"])
    bad = [o for o in overrides if not o.startswith("data.manifest")] + [f"data.manifest={root / 'nope.csv'}"]
    for command in (["sweep", "--dry-run", *bad], ["sweep", *bad]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"input error: data.manifest: {root / 'nope.csv'}: file not found",
                       f"input error: noise.train: {folders['train']}: not a folder"], err
    assert not Path(load_config(None, overrides).workdir).exists()
