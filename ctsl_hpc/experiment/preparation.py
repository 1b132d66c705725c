"""The prepare stage: every input read and checked once, before anything trains.

On a cluster it is a CPU job of its own at the head of the job graph (``slurm.prepare``), so that a
bad file is found before a GPU is held, and the GPU jobs read its results instead of checking
again. It decodes every utterance of every split as training reads it, and every file of the noise
folders, spread over the job's CPUs, with progress in the job's log
(:func:`ctsl_hpc.data.audit.audit`; its cache is written as it goes, so a killed run keeps what it
checked); then, from what it read: the durations (the dry run's cost), the waveform statistics of
the training set, the noise-pool checks (readable, long enough, no file in two pools), the corpus
fingerprint and the backbone check. With ``data.stage_dir`` it packs the corpus into a few large
files for node-local storage (:mod:`ctsl_hpc.data.packed`). Its summary
(:attr:`~ctsl_hpc.workdir.Workdir.prepared`) is written last: the teacher's job depends on it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ctsl_hpc.atomic_io import atomic_write_json, atomic_write_text, read_json
from ctsl_hpc.backbones import backbone_problem
from ctsl_hpc.config import ConfigError
from ctsl_hpc.data.audio import audio_files, read_audio
from ctsl_hpc.data.audit import AuditStopped, Reading, audit
from ctsl_hpc.data.corpus import SPLITS
from ctsl_hpc.data.noise import NoiseError
from ctsl_hpc.data.packed import JOB_ID_VARIABLE, PackedCorpus, StagingError, is_packed, pack, stage, unstage
from ctsl_hpc.experiment.experiment import Experiment, StopRequest, never
from ctsl_hpc.train.interface import TrainingInterrupted

log = logging.getLogger(__name__)

STAGE_FAILED = "FAILED"  # the first rank's reason, in the stage folder, when it could not stage


def cpus_here() -> int:
    """The CPUs this process may run on (a Slurm job's allocation binds them)."""
    return len(os.sched_getaffinity(0))


def prepare(exp: Experiment, processes: int | None = None, should_stop: StopRequest | None = None) -> dict[str, Any]:
    """Check every input of ``exp`` with ``processes`` worker processes (default: every CPU here) and record
    what was found; returns the summary it writes. Run again, it checks only what is new or changed. A stop
    request (preemption) ends it with ``TrainingInterrupted`` after the files checked so far are cached."""
    processes, should_stop = processes or cpus_here(), should_stop or never
    data, workdir = exp.data, exp.workdir
    workdir.audio_check.parent.mkdir(parents=True, exist_ok=True)
    try:
        # the utterances (Data.splits reads these verdicts), then every file of the noise folders
        data.verdicts = audit([u.path for u in data.everything()], data.reading, workdir.verdicts(), processes,
                              "audio check", should_stop)
        noise = _check_noise(exp, processes, should_stop)
    except AuditStopped as exc:
        raise TrainingInterrupted(workdir.audio_check) from exc
    problem = backbone_problem(exp.cfg.model.backbone)
    if problem:
        raise ConfigError(f"model.backbone: {problem}")
    splits, stats = data.splits, data.stats
    summary = {
        "fingerprint": data.fingerprint,
        "utterances": {split: len(data.corpus.splits[split]) for split in SPLITS},
        "usable": {split: len(splits[split]) for split in SPLITS},
        "audio_hours": {split: round(_samples(data, splits[split]) / exp.cfg.data.sample_rate / 3600, 3) for split in SPLITS},
        "noise": noise,
        "waveform_stats": None if stats is None else {"mean": stats.mean, "std": stats.std},
        "processes": processes,
    }
    atomic_write_json(workdir.prepared, summary)
    if exp.cfg.data.stage_dir:
        _pack(exp, processes)  # its COMPLETE marker, written last, is then what says the stage is done
    log.info("prepared: %s (fingerprint %s)", ", ".join(f"{s} {n}" for s, n in summary["usable"].items()),
             summary["fingerprint"])
    return summary


def ensure_prepared(exp: Experiment) -> dict[str, Any]:
    """The prepare stage's summary; where it has not run (a stage started on its own), it runs here first."""
    done = prepared(exp)
    if done is not None and (not exp.cfg.data.stage_dir or is_packed(exp.workdir.packed)):
        return done
    log.warning("the prepare stage has not run for %s: checking the inputs here", exp.workdir.root)
    return prepare(exp)


def prepared(exp: Experiment) -> dict[str, Any] | None:
    """The summary a finished prepare stage wrote (None while it has not run)."""
    if not exp.workdir.prepared.is_file():
        return None
    return read_json(exp.workdir.prepared, "delete it: the prepare stage writes it again")


def _samples(data, utterances) -> int:
    """The samples training reads of ``utterances`` (after the crop)."""
    return sum(data.verdicts[str(u.path)].moments.count for u in utterances)


def _check_noise(exp: Experiment, processes: int, should_stop: StopRequest) -> dict[str, dict[str, Any]]:
    """Every file of each noise folder read whole: readable, enough audio for the longest crop, no file (or a
    copy of one) in two pools."""
    d, data = exp.cfg.data, exp.data
    reading = Reading(d.sample_rate)
    found: dict[str, dict[str, Any]] = {}
    owners: dict[str, tuple[str, str]] = {}
    for split in SPLITS:
        folder = data.noise_dirs[split]
        key = f"noise.{split}"
        if folder is None or not Path(folder).is_dir():
            raise NoiseError(f"{key}: {folder}: noise folder not found")
        files = audio_files(folder)
        if not files:
            raise NoiseError(f"{key}: {folder}: no audio files in noise folder")
        verdicts = audit(files, reading, exp.workdir.verdicts(), processes, f"{key} check", should_stop)
        bad = [v.problem for v in verdicts.values() if v.problem]
        if bad:
            raise NoiseError(f"{key}: {bad[0]} ({len(bad)} unusable file(s) in {folder})")
        for name, verdict in verdicts.items():
            other = owners.setdefault(verdict.digest, (split, name))
            if other[0] != split:
                raise NoiseError(f"noise.{split}: {name} is {other[1]} of noise.{other[0]} (or a copy of it): the "
                                 "train, dev and test noise pools must not share files")
        seconds = sum(v.seconds for v in verdicts.values())
        usable = min(seconds, exp.cfg.noise.minutes * 60)
        if usable < d.max_seconds:
            raise NoiseError(f"{key}: {folder}: the noise pool holds {usable:.2f} s, fewer than the longest crop "
                             f"(data.max_seconds={d.max_seconds:g} s)")
        found[split] = {"folder": str(folder), "files": len(files), "seconds": round(seconds, 3),
                        "pool_seconds": round(usable, 3)}
    return found


def _pack(exp: Experiment, processes: int) -> None:
    """Every usable utterance into the packed corpus (kept when an earlier run packed the same corpus)."""
    data, folder = exp.data, exp.workdir.packed
    lengths = {str(u.path): data.verdicts[str(u.path)].moments.count for split in SPLITS for u in data.splits[split]}
    meta = {"fingerprint": data.fingerprint, "utterances": len(lengths)}
    if is_packed(folder) and PackedCorpus(folder).meta == meta:
        return
    r = data.reading
    log.info("packing %d utterances into %s with %d process(es)", len(lengths), folder, processes)
    read = functools.partial(read_audio, sample_rate=r.sample_rate, max_seconds=r.max_seconds, min_seconds=r.min_seconds)
    pack(folder, lengths, read, meta, processes=processes)


@contextlib.contextmanager
def staged_corpus(exp: Experiment) -> Iterator[PackedCorpus | None]:
    """With ``data.stage_dir``: the packed corpus copied to this node's stage folder for the job (by the node's
    first rank; the others wait for it), read from there, and removed when the job is done with it.

    Removal by the first rank is safe: every rank's last read (the development set of its last epoch) comes
    before the final checkpoint, which all ranks save together."""
    if not exp.cfg.data.stage_dir:
        yield None
        return
    root = Path(os.path.expandvars(os.path.expanduser(exp.cfg.data.stage_dir)))
    if "$" in str(root):
        raise ConfigError(f"data.stage_dir: {exp.cfg.data.stage_dir} names a variable this job does not have ({root})")
    job = os.environ.get(JOB_ID_VARIABLE) or (os.environ.get("MASTER_PORT") if os.environ.get("WORLD_SIZE", "1") != "1"
                                              else None) or str(os.getpid())
    target = root / f"ctsl-{exp.data.fingerprint}-{job}"
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    store = _stage_first(exp.workdir.packed, target) if first else _wait_for_stage(target)
    exp.data.store = store
    try:
        yield store
    finally:
        exp.data.store = None
        if first:
            unstage(target)


def _stage_first(packed: Path, target: Path) -> PackedCorpus:
    """The node's first rank copies the pack; a refusal is left for the node's other ranks to read."""
    (target / STAGE_FAILED).unlink(missing_ok=True)
    try:
        return stage(packed, target)
    except StagingError as exc:
        atomic_write_text(target / STAGE_FAILED, str(exc))
        raise


def _wait_for_stage(target: Path, timeout_s: float = 3600.0) -> PackedCorpus:
    """The node's first rank is copying the pack: wait until it is complete (or refused)."""
    deadline = time.monotonic() + timeout_s
    while not is_packed(target):
        if (target / STAGE_FAILED).is_file():
            raise StagingError((target / STAGE_FAILED).read_text())
        if time.monotonic() > deadline:
            raise TimeoutError(f"data.stage_dir: {target} was not staged within {timeout_s:.0f} s by this node's first rank")
        time.sleep(1.0)  # polling another process's copy on this node
    return PackedCorpus(target)
