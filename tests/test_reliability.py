"""Reliability under real use: one sweep per work directory, every input checked before training,
work directories that move and survive torn records and full disks, safe settings.

Each test reproduces a finding (a user on shared storage, kill -9, a small tmpfs) that failed before.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from ctsl_hpc.config import ConfigError, load_config
from ctsl_hpc.workdir import Workdir
from tests.helpers import cli

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(out: subprocess.CompletedProcess) -> bool:
    """The command ended with one error line (after its log lines), no traceback."""
    return "Traceback" not in out.stderr and out.stderr.strip().splitlines()[-1].split(":")[0] in ("error", "input error")


def _copy_corpus(small_corpus, folder: Path) -> Path:
    """A private copy of the small corpus (manifest with absolute paths) that a test may damage."""
    rows = list(csv.DictReader(small_corpus.manifest.open()))
    (folder / "audio").mkdir(parents=True)
    for row in rows:
        source = small_corpus.manifest.parent / row["path"]
        shutil.copy2(source, folder / "audio" / source.name)
        row["path"] = str(folder / "audio" / source.name)
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


# ------------------------------------------------------------------------ inputs and settings, before any work


@pytest.mark.parametrize(("override", "key"), [
    ("seed=-5", "seed"),
    ("train.seed=-1", "train.seed"),
    ("student.snr_db=.nan", "student.snr_db"),
    ("student.lambda_tl=.inf", "student.lambda_tl"),
    (r'name="demo\ntouch FILE #"', "name"),
    (r'slurm.additional={comment: "x\ntouch FILE #"}', "slurm.additional.comment"),
    ("slurm.students.partition=\"gpu\tb\"", "slurm.students.partition"),
])
def test_bad_values_are_refused_naming_their_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key.replace('.', chr(92) + '.')}: "):
        load_config(None, [override])


def test_noise_folders_must_be_disjoint(small_corpus, tmp_path):
    noise = [f"noise.train={small_corpus.noise_train}", f"noise.dev={small_corpus.noise_train}",
             f"noise.test={small_corpus.noise_test}", "data.corpus=csv", f"data.manifest={small_corpus.manifest}"]
    with pytest.raises(ConfigError, match="noise.dev: is the same folder as noise.train"):
        load_config(None, noise)
    copy = tmp_path / "dev-noise"
    shutil.copytree(small_corpus.noise_dev, copy)
    shutil.copy2(next(Path(small_corpus.noise_train).glob("*.wav")), copy / "stolen.wav")
    out = cli("sweep", "--workdir", tmp_path / "w", "data.corpus=csv", f"data.manifest={small_corpus.manifest}",
              f"noise.train={small_corpus.noise_train}", f"noise.dev={copy}", f"noise.test={small_corpus.noise_test}")
    assert out.returncode == 2 and "must not share files" in out.stderr and "stolen.wav" in out.stderr, out.stderr
    assert _one_error_line(out) and not (tmp_path / "w" / "teacher").exists()


def test_a_corrupt_test_file_stops_the_sweep_before_any_training(small_corpus, tiny_overrides, tmp_path):
    manifest = _copy_corpus(small_corpus, tmp_path / "corpus")
    test_row = next(r for r in csv.DictReader(manifest.open()) if r["split"] == "test")
    Path(test_row["path"]).write_bytes(b"RIFF but not audio")
    workdir = tmp_path / "w"
    out = cli("sweep", *tiny_overrides(workdir), f"data.manifest={manifest}", "tracking.enabled=false")
    assert out.returncode == 2 and test_row["path"] in out.stderr and "data.on_bad_audio=skip" in out.stderr
    assert _one_error_line(out) and not Workdir(workdir).teacher.path.exists()
    # data.on_bad_audio is a runtime setting: the same work directory takes it, the file is left out and counted
    cfg = load_config(None, [*tiny_overrides(workdir), f"data.manifest={manifest}", "data.on_bad_audio=skip"])
    from ctsl_hpc.experiment import Experiment

    exp = Experiment.open(cfg)
    listed = sum(1 for r in csv.DictReader(manifest.open()) if r["split"] == "test")
    assert len(exp.data.splits["test"]) == listed - 1
    assert test_row["path"] not in {str(u.path) for u in exp.data.splits["test"]}
    assert (Workdir(workdir).audio_check).is_file()


def test_an_empty_split_is_refused_naming_the_manifest(small_corpus, tiny_overrides, tmp_path):
    manifest = tmp_path / "no-dev.csv"
    rows = [r for r in csv.DictReader(small_corpus.manifest.open()) if r["split"] != "dev"]
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(small_corpus.manifest.parent / r["path"])} for r in rows)
    out = cli("sweep", *tiny_overrides(tmp_path / "w"), f"data.manifest={manifest}", "tracking.enabled=false")
    assert out.returncode == 2 and str(manifest) in out.stderr and "dev" in out.stderr, out.stderr
    assert not Workdir(tmp_path / "w").teacher.path.exists()


def test_a_silent_dev_file_is_found_before_training_without_preloading(small_corpus, tiny_overrides, tmp_path):
    manifest = _copy_corpus(small_corpus, tmp_path / "corpus")
    dev_row = next(r for r in csv.DictReader(manifest.open()) if r["split"] == "dev")
    wave, rate = sf.read(dev_row["path"])
    sf.write(dev_row["path"], wave * 0.0, rate)
    out = cli("sweep", *tiny_overrides(tmp_path / "w"), f"data.manifest={manifest}", "data.preload=false",
              "tracking.enabled=false")
    assert out.returncode == 2 and dev_row["path"] in out.stderr and "silent" in out.stderr, out.stderr
    assert not Workdir(tmp_path / "w").teacher.path.exists()


# ------------------------------------------------------------------------ a sweep killed, moved, resumed


@pytest.mark.slow
def test_one_sweep_per_workdir_a_killed_run_is_failed_and_a_moved_workdir_resumes(tiny_overrides, tmp_path):
    first, moved = tmp_path / "first", tmp_path / "moved"
    overrides = [*tiny_overrides(first), "student.variants=[RM]", "train.epochs=3", "tracking.enabled=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    sweep = subprocess.Popen([sys.executable, "-m", "ctsl_hpc.launch", "sweep", *overrides], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workdir = Workdir(first)
    deadline = time.monotonic() + 300
    while not list(workdir.teacher.checkpoints.glob("step-*/COMPLETE")):  # polls a file another process writes
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.stdout.read()
        time.sleep(0.2)
    sweep.send_signal(signal.SIGSTOP)  # frozen mid-training, still holding the lock, while the second one tries
    second = cli("sweep", *overrides)
    assert second.returncode == 2, second.stderr
    assert f"pid {sweep.pid} on {socket.gethostname()}, since " in second.stderr and "LOCK" in second.stderr
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    status = cli("status", "--workdir", first).stdout
    assert "FAILED" in status and f"process {sweep.pid} is gone" in status, status

    shutil.move(first, moved)
    again = cli("sweep", *tiny_overrides(moved), "student.variants=[RM]", "train.epochs=3", "tracking.enabled=false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step-" in again.stderr and "| RM |" in again.stdout
    moved_dir = Workdir(moved)
    assert moved_dir.teacher.summary().best_dir.is_relative_to(moved) and not moved_dir.lock_file.exists()
    fingerprint = yaml.safe_load(moved_dir.fingerprint.read_text())["fingerprint"]
    assert f"corpus fingerprint: {fingerprint}" in again.stdout
    for path in (moved_dir.config_file, moved_dir.teacher.done, moved_dir.report.table1_json, moved_dir.waveform_stats):
        assert path.stat().st_mode & 0o027 == 0, f"{path} is writable by its group or readable by others"  # umask 027
    assert str(first) not in "".join(p.read_text() for p in moved.rglob("*.json") if p.parent.name != "mlartifacts")


# ------------------------------------------------------------------------ torn records and a full disk


@pytest.mark.slow
def test_a_full_disk_and_a_torn_record_end_in_one_line_and_lose_nothing(tiny_overrides, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", disk], check=True)
    try:
        overrides = [*tiny_overrides(disk / "w"), "student.variants=[RM]", "tracking.enabled=false"]
        full = cli("sweep", *overrides)
        assert full.returncode == 3, full.stderr[-2000:]
        (line,) = full.stderr.strip().splitlines()[-1:]
        assert line.startswith("i/o error: No space left on device: ") and str(disk / "w") in line, full.stderr[-2000:]
        assert "Traceback" not in full.stderr
        subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
        read_only = cli("sweep", *overrides)  # found before anything runs: the inputs' check writes a test file
        assert read_only.returncode == 2, read_only.stderr[-2000:]
        assert f"input error: workdir: {disk / 'w'}: cannot write there (Read-only file system)" in read_only.stderr
        assert _one_error_line(read_only)
        subprocess.run(["mount", "-o", "remount,rw,size=64m", disk], check=True)
        assert cli("sweep", *overrides).returncode == 0
        reference = cli("sweep", *tiny_overrides(tmp_path / "reference"), "student.variants=[RM]", "tracking.enabled=false")
        assert reference.returncode == 0
        table = Workdir(disk / "w").report.table1_json.read_text()
        assert table == Workdir(tmp_path / "reference").report.table1_json.read_text()  # nothing lost, bit for bit

        for record in (Workdir(disk / "w").config_file, Workdir(disk / "w").waveform_stats):  # read by every sweep
            record.write_text(record.read_text()[: len(record.read_text()) // 2] + "\x00")  # torn
            torn = cli("sweep", *overrides)
            assert torn.returncode == 2 and str(record) in torn.stderr and "delete it" in torn.stderr, torn.stderr
            assert _one_error_line(torn)
            record.unlink()  # the way out it names
            assert cli("sweep", *overrides).returncode == 0
    finally:
        subprocess.run(["umount", "-l", disk], check=False)
