"""The checks before the queue: every input looked at without decoding, one line per problem naming the key
and the path, in a fraction of a second for a small corpus."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
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


def _recorded_dev_set(root: Path, folder: Path, rng) -> list[str]:
    """``folder``: a noisy recording of every dev utterance (the clean file plus a loud hum), their names."""
    import numpy as np
    import soundfile as sf

    names = []
    for row in _rows(root / "manifest.csv"):
        if row["split"] == "dev":
            wave, rate = sf.read(root / row["path"], dtype="float32")
            hum = 0.3 * np.sin(2 * np.pi * rng.uniform(50, 60) * np.arange(wave.size) / rate)
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / Path(row["path"]).name, (wave + hum).astype(np.float32), rate, subtype="FLOAT")
            names.append(Path(row["path"]).name)
    return names


def test_a_real_noisy_development_set_is_what_selection_and_table2_read(inputs, tmp_path, rng):
    import numpy as np

    from ctsl_hpc.evaluate.scoring import condition_set
    from ctsl_hpc.experiment import Experiment
    from ctsl_hpc.experiment.preparation import prepare

    root, _, overrides = inputs
    folder = tmp_path / "dev-0db"
    names = _recorded_dev_set(root, folder, rng)
    cfg = load_config(None, [*overrides, f"eval.noisy_dev_roots={{snr0: {folder}}}"])
    assert input_problems(cfg) == []
    exp = Experiment.open(cfg)
    prepare(exp, processes=1)
    dev = exp.data.noisy("dev", 0.0)  # what the students select their checkpoints on (student.snr_db = 0)
    assert [u.path for u in dev.utterances] == [folder / n for n in names] and dev.noise is None
    recorded = exp.data.recorded("dev")["snr0"]
    heard, clean = np.asarray(recorded[0]["clean"]), np.asarray(exp.data.clean("dev")[0]["clean"])
    assert heard.shape == clean.shape and not np.allclose(heard, clean, atol=0.05)  # the recording, hum and all
    view = condition_set(exp.data.clean("dev"), "snr0", 0, exp.data.pool("dev"), "rms", recorded)
    assert view is recorded  # Table 2's 0 dB development condition
    assert exp.data.noisy("dev", 5.0).noise is not None  # a condition without recordings is mixed
    (folder / names[-1]).unlink()
    (problem,) = input_problems(cfg)
    assert problem.startswith(f"eval.noisy_dev_roots.snr0: {folder} lacks 1 of the {len(names)} dev utterances")


def test_the_prepare_job_checks_and_packs_every_input_without_torch(inputs, tmp_path):
    from ctsl_hpc.data.packed import is_packed
    from ctsl_hpc.experiment import Experiment

    _, _, overrides = inputs
    exp = Experiment.open(load_config(None, [*overrides, f"data.stage_dir={tmp_path / 'node-local'}"]))
    code = ("import sys; from ctsl_hpc.stage_jobs import prepare_job; prepare_job(sys.argv[1]); "
            "heavy = sorted({'torch', 'transformers'} & set(sys.modules)); assert not heavy, f'imported {heavy}'")
    out = subprocess.run([sys.executable, "-c", code, str(exp.workdir.root)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]  # a CPU job: neither torch nor transformers to import
    summary = json.loads(exp.workdir.prepared.read_text())
    assert summary["fingerprint"] == Experiment.reopen(exp.workdir.root).data.fingerprint  # what the GPU jobs read
    assert sum(summary["usable"].values()) > 0 and is_packed(exp.workdir.packed)

