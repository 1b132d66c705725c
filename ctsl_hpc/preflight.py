"""The checks a sweep passes before anything is queued: on the login node, in seconds, torch-free.

A mistake found in a job costs the queue wait and the GPU time it holds. Before ``sweep`` submits
or runs anything (and in its dry run) every input is looked at without decoding: the manifest or
corpus root exists and parses and every listed audio file exists (one stat each), each noise
folder exists, holds audio and shares none with another, every ``eval.noisy_roots`` (``noisy_dev_roots``)
folder holds a file for each test (development) utterance, the backbone folder has its config and weights, and the work
directory's file system takes a write. Each problem is one line naming the key and the path.
Decoding every file is the prepare stage's job (:mod:`ctsl_hpc.experiment.preparation`), a CPU job
of its own. On a parallel file system the stats go to its metadata server: expect seconds per
ten thousand files rather than the local disk's fraction of one.

Example:
    >>> from ctsl_hpc.config import load_config
    >>> cfg = load_config(None, ["data.corpus=csv", "data.manifest=/no/such.csv", "noise.train=/no/n1",
    ...                          "noise.dev=/no/n2", "noise.test=/no/n3"])
    >>> for problem in input_problems(cfg):
    ...     print(problem)
    data.manifest: /no/such.csv: file not found
    noise.train: /no/n1: not a folder
    noise.dev: /no/n2: not a folder
    noise.test: /no/n3: not a folder
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ctsl_hpc.atomic_io import RecordError, read_json
from ctsl_hpc.backbones import backbone_problem
from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.data.audio import WaveformStats, audio_files
from ctsl_hpc.data.audit import Reading, file_stamp
from ctsl_hpc.data.corpora import Corpus, corpus_spec
from ctsl_hpc.data.corpus import SPLITS, CorpusError
from ctsl_hpc.workdir import Workdir

_SHOWN = 3  # missing files named per problem line (with the count of the rest)


class InputProblems(ValueError):
    """What the checks found, one problem per line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def input_problems(cfg: ExperimentConfig, workdir: Workdir | None = None) -> list[str]:
    """Every problem of ``cfg``'s inputs that can be seen without decoding audio (none: an empty list)."""
    workdir = workdir or Workdir(cfg.workdir)
    problems, corpus = _corpus(cfg, workdir)
    noise = (corpus.noise_dirs if corpus is not None and corpus.noise_dirs else None) or (
        None if corpus_spec(cfg.data.corpus).own_noise else {s: getattr(cfg.noise, s) for s in SPLITS})
    if noise is not None:
        problems += _noise(noise)
    if corpus is not None:
        problems += _noisy_roots(cfg, corpus)
    backbone = backbone_problem(cfg.model.backbone)
    if backbone:
        problems.append(f"model.backbone: {backbone}")
    problems += _writable(workdir.root)
    return problems


def check_inputs(cfg: ExperimentConfig, workdir: Workdir | None = None) -> None:
    """Raise :class:`InputProblems` when :func:`input_problems` finds any."""
    problems = input_problems(cfg, workdir)
    if problems:
        raise InputProblems(problems)


def stale_preparation(cfg: ExperimentConfig, workdir: Workdir) -> str | None:
    """Why a finished prepare stage's results no longer describe the corpus (files added, removed or changed
    since it checked them), or None. Its records are read here too: a torn one stops the command, named."""
    if not workdir.prepared.is_file():
        return None
    read_json(workdir.prepared, "delete it: the prepare stage writes it again")
    if workdir.waveform_stats.is_file():
        try:
            WaveformStats.load(workdir.waveform_stats)
        except ValueError as exc:
            raise RecordError(f"{exc}: delete it, it is computed again from the training set") from None
    corpus = corpus_spec(cfg.data.corpus).existing(cfg, workdir.synthetic_data)
    if corpus is None:
        return None
    d = cfg.data
    reading = Reading(d.sample_rate, d.max_seconds, d.min_seconds)
    cache = workdir.verdicts()
    known = cache.load()
    changed = []
    for utt in (u for split in SPLITS for u in corpus.splits[split]):
        entry = cache.lookup(known, str(utt.path))
        if entry is None or entry[0] != file_stamp(utt.path, reading):
            changed.append(str(utt.path))
    if changed:
        return f"{len(changed)} audio file(s) are new or changed since the prepare stage checked them ({_few(changed)})"
    return None


def _corpus(cfg: ExperimentConfig, workdir: Workdir) -> tuple[list[str], Corpus | None]:
    spec = corpus_spec(cfg.data.corpus)
    key = f"data.{spec.required[0]}" if spec.required else "data.corpus"
    try:
        return [], spec.existing(cfg, workdir.synthetic_data)  # None: built by the prepare stage
    except (CorpusError, OSError) as exc:
        return [f"{key}: {exc}"], None


def _noise(folders: dict[str, str | os.PathLike[str] | None]) -> list[str]:
    problems, files = [], {}
    for split, folder in folders.items():
        key = f"noise.{split}"
        if folder is None:
            continue  # the config refuses it when loading
        path = Path(folder)
        if not path.is_dir():
            problems.append(f"{key}: {path}: not a folder")
            continue
        found = audio_files(path)
        if not found:
            problems.append(f"{key}: {path}: holds no audio file")
        files[split] = {f.resolve() for f in found}
    splits = list(files)
    for i, first in enumerate(splits):
        for second in splits[i + 1:]:
            shared = files[first] & files[second]
            if shared:
                problems.append(f"noise.{second}: {folders[second]} shares {len(shared)} file(s) with noise.{first} "
                                f"({_few(sorted(map(str, shared)))}): the noise pools must be disjoint")
    return problems


def _noisy_roots(cfg: ExperimentConfig, corpus: Corpus) -> list[str]:
    """Each real noisy test (``eval.noisy_roots``) or development set (``eval.noisy_dev_roots``) holds a file of
    the same name for every utterance of its split."""
    problems = []
    for name, split, roots in (("eval.noisy_roots", "test", cfg.eval.noisy_roots),
                               ("eval.noisy_dev_roots", "dev", cfg.eval.noisy_dev_roots)):
        for condition, folder in roots.items():
            key, path = f"{name}.{condition}", Path(folder)
            if not path.is_dir():
                problems.append(f"{key}: {path}: not a folder")
                continue
            present = set(os.listdir(path))
            missing = [u.path.name for u in corpus.splits[split] if u.path.name not in present]
            if missing:
                problems.append(f"{key}: {path} lacks {len(missing)} of the {len(corpus.splits[split])} {split} "
                                f"utterances: {_few(missing)}")
    return problems


def _writable(root: Path) -> list[str]:
    """The work directory (or, before it exists, the folder it will be made in) takes a file."""
    folder = root
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".ctsl-write-check-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return [f"workdir: {folder}: cannot write there ({exc.strerror})"]
    return []


def _few(names: Iterable[str]) -> str:
    names = list(names)
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more
