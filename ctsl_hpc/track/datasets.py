"""What a run saw, as MLflow dataset inputs: the corpus and the noise pools, each with a content digest.

A dataset input is a plain record (name, digest, source, profile, context) journaled like every
other tracking record; replay turns it into MLflow's ``DatasetInput`` (the runs table's Dataset
column shows ``name (digest)``). MLflow-free.

- The corpus: :func:`corpus_digest` of its manifest (the one place a corpus fingerprint is computed
  for tracking; unify it there).
- A noise pool: the digest of its file names and samples (what a run mixed in), its files and minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.data.corpus import Utterance
from ctsl_hpc.data.noise import NoisePool

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag: train, dev, test
DIGEST_CHARS = 12  # MLflow stores at most 36


def corpus_digest(splits: Mapping[str, Sequence[Utterance]]) -> str:
    """A content digest of the corpus manifest: every utterance's split, path (relative to the corpus
    folder), labels and speaker, in a fixed order. The audio bytes are not read (fast on 100k files)."""
    utterances = [(split, u) for split, utts in splits.items() for u in utts]
    root = os.path.commonpath([str(u.path.parent) for _, u in utterances]) if utterances else ""
    lines = sorted(
        "\t".join([split, os.path.relpath(u.path, root), *(f"{y:.6g}" for y in u.labels), u.speaker or ""])
        for split, u in utterances
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:DIGEST_CHARS]


def pool_digest(pool: NoisePool) -> str:
    """A content digest of a noise pool: its files' names, its sample rate and its samples."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[Path(s).name for s in pool.sources], list(pool.ends), pool.sample_rate]).encode())
    digest.update(pool.signal.tobytes())
    return digest.hexdigest()[:DIGEST_CHARS]


def corpus_input(cfg: ExperimentConfig, splits: Mapping[str, Sequence[Utterance]], context: str) -> dict[str, Any]:
    """The corpus as a dataset input: ``<corpus> corpus``, its manifest (or root) and utterances per split."""
    source = cfg.data.manifest or cfg.data.root or cfg.data.corpus
    profile = {"utterances": {split: len(utts) for split, utts in sorted(splits.items())}}
    return _record(f"{cfg.data.corpus} corpus", corpus_digest(splits), str(source), profile, context)


def pool_input(split: str, pool: NoisePool, folder: str | os.PathLike[str] | None, context: str) -> dict[str, Any]:
    """A noise pool as a dataset input: ``<split> noise``, its folder, files and minutes."""
    profile = {"files": len(pool.sources), "minutes": round(pool.seconds / 60, 3), "sample_rate": pool.sample_rate}
    return _record(f"{split} noise", pool_digest(pool), str(folder or "in memory"), profile, context)


def _record(name: str, digest: str, uri: str, profile: dict[str, Any], context: str) -> dict[str, Any]:
    return {
        "name": name, "digest": digest, "source_type": "local", "source": json.dumps({"uri": uri}),
        "profile": json.dumps(profile), "context": context,
    }  # fmt: skip
