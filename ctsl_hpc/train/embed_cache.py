"""The teacher's clean embeddings, for the transfer and contrastive terms of the student loss.

The teacher is frozen and the clean audio (with its crop) is fixed, so its pooled embedding of each
training utterance does not change between epochs, students or tuning trials: it is computed once,
stored under the work directory keyed by the teacher's weights and the data it saw, and looked up
by utterance index in the student step. :func:`live_teacher` is the uncached path (a teacher forward
every step) used when ``student.cache_teacher_embeddings`` is off.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import safetensors.torch
import torch

from ctsl_hpc.atomic_io import atomic_write_bytes
from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.model import EmotionModel, weights_file
from ctsl_hpc.train.inference import predict
from ctsl_hpc.train.objective import TeacherEmbedder

log = logging.getLogger(__name__)

CACHE_TENSOR = "embeddings"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(teacher_dir: Path, dataset: UtteranceSet) -> str:
    """Hash of the teacher's weights and of exactly what it embeds (files, crop, normalisation)."""
    payload = {
        "teacher": file_digest(weights_file(teacher_dir)),
        "files": [str(u.path) for u in dataset.utterances],
        "sample_rate": dataset.sample_rate,
        "max_seconds": dataset.max_seconds,
        "stats": None if dataset.stats is None else [dataset.stats.mean, dataset.stats.std],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def teacher_embeddings(
    teacher: EmotionModel, teacher_dir: Path, dataset: UtteranceSet, cache_dir: Path, batch_size: int
) -> torch.Tensor:
    """[N, D] clean embeddings of ``dataset`` by ``teacher``; computed once, then read from the cache."""
    path = Path(cache_dir) / f"teacher-{cache_key(teacher_dir, dataset)}.safetensors"
    if path.is_file():
        return safetensors.torch.load(path.read_bytes())[CACHE_TENSOR]
    log.info("computing the teacher's clean embeddings of %d utterances -> %s", len(dataset), path)
    _, embeddings = predict(teacher, dataset, batch_size, use_noisy=False)
    table = torch.from_numpy(embeddings)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, safetensors.torch.save({CACHE_TENSOR: table}))  # every rank of a job may write it
    return table


def cached_teacher(table: torch.Tensor) -> TeacherEmbedder:
    """Look the teacher's embedding of each batch item up by its dataset index."""
    return lambda batch: table[batch["index"].cpu()]


def live_teacher(teacher: EmotionModel) -> TeacherEmbedder:
    """Run the frozen teacher on the clean batch every step (the paper's uncached path).

    The teacher follows the batch to its device (the student's engine places the batch), so a
    student on a GPU gets its teacher on the same GPU.
    """
    teacher.eval().requires_grad_(False)

    @torch.no_grad()
    def embed(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        clean = batch["clean"]
        if next(teacher.parameters()).device != clean.device:
            teacher.to(clean.device)
        return teacher.embed(clean, batch["mask"])

    return embed
