"""The audio check: one read per file, the same verdicts in one process or several, a cache that a killed
check keeps, progress a batch log can follow."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ctsl_hpc.data import audit as audit_module
from ctsl_hpc.data.audio import Moments, read_audio
from ctsl_hpc.data.audit import Progress, Reading, VerdictCache, audit

SR = 16000
READING = Reading(SR, max_seconds=0.8, min_seconds=0.2)


@pytest.fixture
def files(tmp_path, rng, speech, write_wav) -> list[Path]:
    """A few speech-like files of random lengths, one silent and one too short, one not audio at all."""
    paths = [write_wav(tmp_path / "audio" / f"u{i:02d}.wav", speech(float(rng.uniform(0.3, 1.2)))) for i in range(12)]
    paths.append(write_wav(tmp_path / "audio" / "silent.wav", np.zeros(SR, np.float32)))
    paths.append(write_wav(tmp_path / "audio" / "short.wav", speech(0.1)))
    junk = tmp_path / "audio" / "junk.wav"
    junk.write_bytes(rng.bytes(2000))
    return [*paths, junk]


def test_each_verdict_holds_the_files_digest_and_the_moments_of_what_training_reads(files, tmp_path):
    verdicts = audit(files, READING, VerdictCache(tmp_path / "cache.jsonl"))
    for path in files:
        verdict = verdicts[str(path)]
        assert verdict.digest == hashlib.sha256(path.read_bytes()).hexdigest()
        if path.stem.startswith("u"):
            wave = read_audio(path, SR, READING.max_seconds, READING.min_seconds)
            assert verdict.problem is None and verdict.moments == Moments.of(wave)
            assert verdict.seconds == pytest.approx(len(read_audio(path, SR)) / SR)
    assert "silent" in verdicts[str(files[-3])].problem and "too short" in verdicts[str(files[-2])].problem
    assert "cannot read audio" in verdicts[str(files[-1])].problem


def test_two_processes_give_the_verdicts_of_one(files, tmp_path, monkeypatch):
    one = audit(files, READING, VerdictCache(tmp_path / "one.jsonl"), processes=1)
    monkeypatch.setattr(audit_module, "FILES_PER_HELPER", 1)  # a helper for these few files
    two = audit(files, READING, VerdictCache(tmp_path / "two.jsonl"), processes=2)
    assert list(one) == list(two) == [str(p) for p in files] and one == two


def test_a_helper_process_is_started_only_for_enough_files(files, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(audit_module, "ProcessPoolExecutor", lambda *args, **kwargs: started.append(args) or 1 / 0)
    verdicts = audit(files, READING, VerdictCache(tmp_path / "cache.jsonl"), processes=8)
    assert len(verdicts) == len(files) and not started  # fewer files than FILES_PER_HELPER: this process alone
    monkeypatch.setattr(audit_module, "FILES_PER_HELPER", len(files) // 2)
    with pytest.raises(ZeroDivisionError):  # two helpers' worth of files: the pool is asked for exactly two
        audit(files, READING, VerdictCache(tmp_path / "again.jsonl"), processes=8)
    assert started == [(2,)]


def test_a_rerun_reads_only_the_files_that_changed(files, tmp_path, monkeypatch, speech, write_wav):
    cache = VerdictCache(tmp_path / "cache.jsonl", root=tmp_path)
    audit(files, READING, cache)
    assert all(not json.loads(line)["path"].startswith("/") for line in cache.path.read_text().splitlines())
    write_wav(files[0], speech(0.9))  # changed: size and mtime
    checked = []
    real = audit_module.check_file
    monkeypatch.setattr(audit_module, "check_file", lambda path, reading: checked.append(path) or real(path, reading))
    again = audit(files, READING, cache)
    assert checked == [str(files[0])] and again[str(files[0])].digest == hashlib.sha256(files[0].read_bytes()).hexdigest()


def test_a_check_killed_halfway_keeps_its_verdicts_and_the_rerun_checks_only_the_rest(tmp_path, rng, speech, write_wav):
    files = [write_wav(tmp_path / "audio" / f"u{i:03d}.wav", speech(1.0)) for i in range(120)]
    cache = tmp_path / "cache.jsonl"
    script = (f"import sys, time; from pathlib import Path; from ctsl_hpc.data import audit as a\n"
              f"real = a.check_file\n"
              f"a.check_file = lambda p, r: (time.sleep(0.02), real(p, r))[1]  # slow enough to be killed halfway\n"
              f"a.audit(sys.argv[1:], a.Reading({SR}, 0.8, 0.2), a.VerdictCache(Path({str(cache)!r})))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, files)], start_new_session=True)
    deadline = time.monotonic() + 120
    while not cache.is_file() or len(cache.read_text().splitlines()) < 40:
        assert proc.poll() is None and time.monotonic() < deadline, "the check ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {json.loads(line)["path"] for line in cache.read_text().splitlines() if line.endswith("}")}
    assert 40 <= len(kept) < len(files)
    checked = []
    real = audit_module.check_file
    audit_module.check_file = lambda path, reading: checked.append(path) or real(path, reading)
    try:
        verdicts = audit(files, Reading(SR, 0.8, 0.2), VerdictCache(cache))
    finally:
        audit_module.check_file = real
    assert sorted(checked) == sorted(str(p) for p in files if str(p) not in kept)  # only the files left
    assert len(verdicts) == len(files) and all(v.problem is None for v in verdicts.values())


def test_a_batch_log_hears_of_a_long_check_at_every_interval(caplog, monkeypatch):
    monkeypatch.setenv("CI", "1")  # as in a batch log: no bar
    clock = iter([0.0, 0.0, 5.0, 16.0, 20.0, 31.5, 40.0])
    monkeypatch.setattr(audit_module.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="ctsl_hpc.data.audit"):
        progress = Progress(400, "audio check", every_s=15.0)
        for _ in range(4):
            progress.update(100)
    lines = [r.getMessage() for r in caplog.records]
    # updates at 0, 5, 16 and 31.5 s: a line at 16 s and at 31.5 s (each line reads the clock once more)
    assert lines == ["audio check: 300/400 files (15 files/s), about 7 s left",
                     "audio check: 400/400 files (10 files/s), about 0 s left"], lines
