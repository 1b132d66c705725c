"""The work directory of a sweep: every folder, marker and record in it has its name here.

A work directory holds everything a resume needs. Re-running a command on it continues the same
experiment: a configuration that changes the experiment (data, model, training, evaluation) is
refused, naming the keys that differ; one that only changes where and how it runs (``workdir``,
``slurm``, ``tracking``) is accepted and saved, so requeued and resumed jobs pick it up.

Layout (``Workdir`` attributes in brackets)::

    config.yaml            the resolved configuration [config_file]
    waveform_stats.json    training-set mean/std [waveform_stats]
    data/synthetic/        the demo corpus, when built [synthetic_data]
    data/prepared.json     the prepare stage's summary, written when it is done [prepared]; fingerprint.json [fingerprint]
    data/packed/           the corpus packed into a few large files, with data.stage_dir [packed]
    cache/                 the teacher's clean embeddings [cache], audio checks [audio_check], durations [durations]
    teacher/, students/RM_TL/, tune/trials/<id>/   one RunDir per training run
        history.json, starts.json, DONE, checkpoints/step-00000042/, epochs/epoch-003/
    report/                Table 1 and 2, scores, predictions, plots [report: ReportFiles]
    jobs/<key>.json        the job registry [job_file]
    LOCK                   who drives the work directory now [lock]
    tracking/              the MLflow journal and run ids (its files: ctsl_hpc.track.journal)
    slurm/<job id>/        submitit's scripts and logs [submitit]
    code/<hash>/ctsl_hpc/  the package the sweep's jobs import (ctsl_hpc.snapshot) [code]
    ray/<job id>/          a Ray allocation's rendezvous [ray]
    tune/, final/, best_config.yaml, trials.csv, tune_summary.png   the Ray Tune search (final/: its final students)
    sweep.json             how the sweep was started: a search or not, the backend [sweep_record]
    seed-<s>/              the replicates of `seeds`: the sweep per seed, sharing data/ and cache/ [replicate]

The inside of a checkpoint (engine files), of a model directory (:mod:`ctsl_hpc.model`) and of the
tracking folder belong to the modules that write them. Every record here is written atomically and
read back with an error naming a torn file (:mod:`ctsl_hpc.atomic_io`). Torch-free: submitting stays fast.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import yaml

from ctsl_hpc.atomic_io import RecordError, atomic_write_json, atomic_write_text, owner_only, read_json
from ctsl_hpc.config import ConfigError, ExperimentConfig, config_from_dict, flatten
from ctsl_hpc.data.audit import VerdictCache
from ctsl_hpc.data.packed import COMPLETE as PACKED_COMPLETE
from ctsl_hpc.locks import WorkdirLock
from ctsl_hpc.masking import mask
from ctsl_hpc.run_records import read_history
from ctsl_hpc.variants import TEACHER

# what may change on an existing sweep: where and how it runs, not what it computes (a section or a dotted key)
REPLICATE_PREFIX = "seed-"  # a replicate's folder: seed-<s>/
RUNTIME_KEYS = (
    "workdir", "umask", "slurm", "tracking", "cost", "data.on_bad_audio", "data.stage_dir", "tune.max_failures",
    "tune.reuse_actors",
)


class ConfigMismatch(ValueError):
    """The work directory was created for another experiment."""


# ----------------------------------------------------------------------------- a training run


@dataclass(frozen=True)
class StageSummary:
    """What a finished training run recorded: its development scores and best epoch."""

    run: RunDir
    best_epoch: int
    dev_scores: dict[int, float]

    @property
    def best_dir(self) -> Path:
        """The model directory of the best epoch."""
        return self.run.epoch_dir(self.best_epoch)


@dataclass(frozen=True)
class RunDir:
    """One training run (the teacher, a student, a tuning trial): checkpoints, epochs, history."""

    path: Path

    @property
    def history(self) -> Path:
        return self.path / "history.json"

    @property
    def done(self) -> Path:
        """The marker of a finished run; it holds the :class:`StageSummary`."""
        return self.path / "DONE"

    @property
    def starts_file(self) -> Path:
        """One record per (re)start of the run: the host of each rank and the step it resumed from."""
        return self.path / "starts.json"

    def starts(self) -> list[dict]:
        """The records :meth:`record_start` wrote, oldest first."""
        if not self.starts_file.is_file():
            return []
        return read_json(self.starts_file, "delete it: it only records where earlier starts ran")

    def record_start(self, hosts: list[str], resumed_step: int | None) -> None:
        """Append a start: ``hosts[r]`` is rank r's host; ``resumed_step`` None for a fresh start."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hosts": hosts, "resumed_step": resumed_step}
        atomic_write_json(self.starts_file, [*self.starts(), entry])

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """The resumable checkpoint after optimiser step ``step``."""
        return self.checkpoints / f"step-{step:08d}"

    @staticmethod
    def checkpoint_step(path: Path) -> int:
        """The step of a :meth:`checkpoint` folder."""
        return int(path.name.split("-")[1].split(".")[0])

    def epoch_dir(self, epoch: int) -> Path:
        """The model directory saved at the end of ``epoch`` (1-based)."""
        return self.path / "epochs" / f"epoch-{epoch:03d}"

    def summary(self) -> StageSummary | None:
        """The summary the finished run wrote, or None while it has not finished."""
        if not self.done.is_file():
            return None
        saved = read_json(self.done, "delete it and run the same command again: the run resumes from its newest "
                                     "checkpoint and marks itself done anew")
        return StageSummary(self, int(saved["best_epoch"]), {int(k): float(v) for k, v in saved["dev_scores"].items()})

    def write_summary(self, best_epoch: int, dev_scores: Mapping[int, float]) -> StageSummary:
        """Mark the run finished (paths are not stored: the work directory may move)."""
        atomic_write_json(self.done, {"best_epoch": best_epoch, "dev_scores": dict(dev_scores)})
        return StageSummary(self, best_epoch, {int(k): float(v) for k, v in dev_scores.items()})

    def progress(self) -> tuple[int | None, float | None]:
        """(last finished epoch, best development CCC) from the run's history."""
        history = read_history(self.history)
        if not history.epochs:
            return None, None
        return history.last_epoch, history.best.dev_score


@dataclass(frozen=True)
class ReportFiles:
    """The files of a report folder (``<workdir>/report`` or any folder ``report`` rebuilds)."""

    path: Path

    SCORES_CSV = "scores.csv"
    TABLE1_MD, TABLE1_JSON = "table1.md", "table1.json"
    TABLE2_MD, TABLE2_JSON = "table2.md", "table2.json"
    DIAGNOSTICS_MD = "diagnostics.md"  # Pearson r and mean bias beside Table 1's CCC
    CCC_PLOT = "ccc_vs_snr.png"
    PROJECTION_NPZ, PROJECTION_PLOT = "projection.npz", "embedding_projection.png"
    PREDICTIONS, PREDICTION_PLOT = "predictions", "pred_vs_true.png"  # per-utterance predictions, their plot
    DONE = "DONE"  # written last by the evaluation job, after the report reached the tracking store

    done = property(lambda self: self.path / self.DONE)
    scores_csv = property(lambda self: self.path / self.SCORES_CSV)
    table1_md = property(lambda self: self.path / self.TABLE1_MD)
    table1_json = property(lambda self: self.path / self.TABLE1_JSON)
    table2_md = property(lambda self: self.path / self.TABLE2_MD)
    table2_json = property(lambda self: self.path / self.TABLE2_JSON)
    ccc_plot = property(lambda self: self.path / self.CCC_PLOT)
    projection_npz = property(lambda self: self.path / self.PROJECTION_NPZ)
    projection_plot = property(lambda self: self.path / self.PROJECTION_PLOT)
    diagnostics_md = property(lambda self: self.path / self.DIAGNOSTICS_MD)
    predictions = property(lambda self: self.path / self.PREDICTIONS)
    prediction_plot = property(lambda self: self.path / self.PREDICTION_PLOT)

    def prediction_file(self, variant: str, epoch: int) -> Path:
        """The saved test predictions of ``variant``'s checkpoint of ``epoch``."""
        return self.predictions / quote(variant, safe="+") / f"epoch-{epoch:03d}.npz"

    def prediction_files(self) -> dict[str, dict[int, Path]]:
        """Every saved prediction file: {variant: {epoch: path}} (empty when there is none)."""
        found: dict[str, dict[int, Path]] = {}
        for path in sorted(self.predictions.glob("*/epoch-*.npz")):
            found.setdefault(unquote(path.parent.name), {})[int(path.stem.split("-")[1])] = path
        return found


# ----------------------------------------------------------------------------- the work directory


class Workdir:
    """The folders and records of one work directory (creating nothing until asked)."""

    SHARED_WITH_FINAL = ("teacher", "data", "cache")  # what the tuned final students reuse of the search

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"Workdir({str(self.root)!r})"

    def folder(self, *parts: str) -> Path:
        """``root/parts...``, created if missing."""
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    config_file = property(lambda self: self.root / "config.yaml")
    waveform_stats = property(lambda self: self.root / "waveform_stats.json")
    synthetic_data = property(lambda self: self.root / "data" / "synthetic")
    cache = property(lambda self: self.root / "cache")
    jobs = property(lambda self: self.root / "jobs")
    tracking = property(lambda self: self.root / "tracking")
    submitit = property(lambda self: self.root / "slurm")
    ray = property(lambda self: self.root / "ray")
    tune = property(lambda self: self.root / "tune")
    final = property(lambda self: self.root / "final")
    best_config = property(lambda self: self.root / "best_config.yaml")
    sweep_record = property(lambda self: self.root / "sweep.json")  # how it was started: a search or not, the backend
    trials_csv = property(lambda self: self.root / "trials.csv")
    tune_summary_plot = property(lambda self: self.root / "tune_summary.png")
    code = property(lambda self: self.root / "code")  # frozen copies of the package, one per content hash
    lock_file = property(lambda self: self.root / "LOCK")
    audio_check = property(lambda self: self.root / "cache" / "audio-check.jsonl")  # verdicts per audio file
    prepared = property(lambda self: self.root / "data" / "prepared.json")  # the prepare stage's summary (done)
    packed = property(lambda self: self.root / "data" / "packed")  # the corpus in a few large files (data.stage_dir)
    packed_done = property(lambda self: self.packed / PACKED_COMPLETE)  # written last by the packer
    durations = property(lambda self: self.root / "cache" / "durations.json")  # header durations (the dry run's cost)
    fingerprint = property(lambda self: self.root / "data" / "fingerprint.json")  # the corpus's content hash
    mlflow_db = property(lambda self: self.root / "mlflow.db")
    mlartifacts = property(lambda self: self.root / "mlartifacts")

    @property
    def report(self) -> ReportFiles:
        return ReportFiles(self.root / "report")

    @property
    def teacher(self) -> RunDir:
        return RunDir(self.root / "teacher")

    def student(self, variant: str) -> RunDir:
        return RunDir(self.root / "students" / variant.replace("+", "_"))

    def run(self, variant: str) -> RunDir:
        """The training run of ``variant`` (:data:`~ctsl_hpc.variants.TEACHER`: the teacher's)."""
        return self.teacher if variant == TEACHER else self.student(variant)

    def trial(self, trial_id: str) -> RunDir:
        """A Ray Tune trial's training run."""
        return RunDir(self.root / "tune" / "trials" / trial_id)

    def verdicts(self) -> VerdictCache:
        """The audio checks' cache (:attr:`audio_check`), naming the files inside this folder relative to it."""
        return VerdictCache(self.audio_check, self.root)

    def masked_config(self, cfg: ExperimentConfig) -> Path:
        """``cfg`` with its secrets masked (:func:`ctsl_hpc.masking.mask`), as ``tracking/config.yaml``: what is shown
        of it (the runs' artifact); ``config.yaml`` itself keeps them, its owner's alone, for resume."""
        path = self.tracking / self.config_file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, yaml.safe_dump(mask(cfg.to_dict()), sort_keys=False))

    def lock(self, command: str) -> WorkdirLock:
        """``with workdir.lock("sweep"):`` hold the work directory while this process drives it."""
        self.root.mkdir(parents=True, exist_ok=True)
        return WorkdirLock(self.lock_file, command)

    def home(self) -> tuple[Workdir, str] | None:
        """The sweep this work directory belongs to, and the prefix of its jobs' and runs' keys there: a search's
        ``final/`` (``final/``) or a replicate ``seed-<s>/`` (``seed-<s>/``); None for a sweep's own. Its jobs are
        registered, and its runs logged, in that sweep's."""
        parent = Workdir(self.root.parent)
        if parent.final == self.root and parent.best_config.is_file():
            return parent, "final/"
        if self.root.name.startswith(REPLICATE_PREFIX) and parent.config_file.is_file() and parent.replicates():
            return parent, f"{self.root.name}/"
        return None

    def replicate(self, seed: int) -> Workdir:
        """The work directory of replicate ``seed`` (``seed-<seed>/``: the sweep once more with that seed)."""
        return Workdir(self.root / f"{REPLICATE_PREFIX}{seed}")

    def replicates(self) -> list[int]:
        """The seeds of the replicates this sweep holds (``seeds`` in its config), none for a single run."""
        return list(self.read_config().seeds) if self.config_file.is_file() else []

    def share_with_replicate(self, seed: int) -> Workdir:
        """``seed-<seed>/``, linked to this sweep's data and cache (the corpus and the prepare stage's results,
        checked once for every seed; the cached teacher embeddings are keyed by teacher)."""
        replicate = self.replicate(seed)
        replicate.root.mkdir(parents=True, exist_ok=True)
        for name in ("data", "cache"):
            link = replicate.root / name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(os.path.join("..", name), target_is_directory=True)
        return replicate

    def record_sweep(self, search: bool, backend: str | None) -> None:
        """Note how the sweep was started, for ``resume`` and ``status``."""
        atomic_write_json(self.sweep_record, {"search": search, "backend": backend})

    def sweep(self) -> dict:
        """How the sweep was started (``search``, ``backend``); a work directory from before the record: a plain sweep."""
        if not self.sweep_record.is_file():
            return {"search": self.best_config.is_file() or self.tune.is_dir(), "backend": None}
        return read_json(self.sweep_record, "delete it: the next sweep writes it again")

    def open_replicates(self, cfg: ExperimentConfig) -> list[Workdir]:
        """``seed-<s>/`` for each of ``cfg.seeds``, linked to this sweep's data and cache, each with the sweep's
        config under its seed (``seed`` and ``train.seed``; no ``seeds``)."""
        opened = []
        for seed in cfg.seeds:
            replicate = self.share_with_replicate(seed)
            values = cfg.to_dict()
            values.update(seeds=[], seed=seed, workdir=str(replicate.root))
            values["train"]["seed"] = seed
            opened.append(Workdir.open(config_from_dict(values), replicate.root))
        return opened

    def code_snapshots(self) -> list[str]:
        """The content hashes of the package copies the sweep's jobs imported (``code/<hash>``)."""
        return sorted(p.name for p in self.code.iterdir() if not p.name.startswith(".")) if self.code.is_dir() else []

    def job_file(self, key: str) -> Path:
        """The registry record of job ``key`` (``teacher``, ``student/RM+TL``, ``eval``)."""
        return self.jobs / (quote(key, safe="") + ".json")

    def job_keys(self) -> list[str]:
        """The keys of every job record."""
        return [unquote(p.name[: -len(".json")]) for p in self.jobs.glob("*.json")] if self.jobs.is_dir() else []

    def share_with_final(self) -> Workdir:
        """``final/``, linked to this search's teacher, data and cache, with a copy of its statistics."""
        final = Workdir(self.final)
        final.root.mkdir(parents=True, exist_ok=True)
        for name in self.SHARED_WITH_FINAL:
            link, target = final.root / name, self.root / name
            if not link.exists() and target.exists():
                link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)  # moves along
        if self.waveform_stats.is_file() and not final.waveform_stats.exists():
            atomic_write_text(final.waveform_stats, self.waveform_stats.read_text())
        return final

    # -- the saved configuration

    def read_config(self) -> ExperimentConfig:
        """The configuration this work directory was created with."""
        if not self.config_file.is_file():
            raise ConfigError(f"{self.config_file} does not exist: --workdir must be a sweep's work directory")
        try:
            values = yaml.safe_load(self.config_file.read_text())
            if not isinstance(values, dict):
                raise yaml.YAMLError("not a mapping")
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise RecordError(f"{self.config_file} is torn or unreadable ({str(exc).splitlines()[0]}): delete it and "
                              "run the sweep command again, which writes it from that command's settings") from None
        return config_from_dict(values)

    @classmethod
    def open(cls, cfg: ExperimentConfig, root: str | os.PathLike[str] | None = None) -> Workdir:
        """Create or reopen the work directory of ``cfg``, refuse one made for another experiment,
        and (re)write its ``config.yaml``."""
        workdir = cls(root or cfg.workdir)
        workdir.root.mkdir(parents=True, exist_ok=True)
        if workdir.config_file.is_file():
            diff = experiment_differences(workdir.read_config(), cfg)
            if diff:
                raise ConfigMismatch(
                    f"{workdir.root} was created with another configuration (differs at: {', '.join(diff)}); "
                    "use a new --workdir or the same settings"
                )
        with owner_only():  # it keeps the secrets a config holds (ctsl_hpc.masking): its owner's alone
            atomic_write_text(workdir.config_file, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return workdir


def experiment_differences(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """Dotted keys whose values differ, ignoring the runtime sections."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    changed = (k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return sorted(k for k in changed if not any(k == r or k.startswith(f"{r}.") for r in RUNTIME_KEYS))
