"""Table 2: how close each model's noisy embeddings stay to the teacher's clean ones (dev set).

Per model and condition: RMSE and mean cosine similarity between the teacher's clean embeddings
and the model's embeddings of the same utterances under the condition, and the label-margin
InfoNCE loss over random batches of 32 clean/noisy pairs (a seeded permutation of the set, the
same for every model and condition) until every sample is used, as the paper measured it: a
corpus listed by podcast would otherwise fill a batch with one speaker. Batches without a valid
anchor are skipped and the anchors used counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.data.conditions import CONDITIONS, HARDEST
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.evaluate.metrics import ccc_numpy
from ctsl_hpc.evaluate.protocol import best_student
from ctsl_hpc.evaluate.scoring import condition_set
from ctsl_hpc.losses import contrastive_loss, margin_negatives, transfer_loss
from ctsl_hpc.model import load_model
from ctsl_hpc.train.inference import predict
from ctsl_hpc.variants import TEACHER

INFONCE_BATCH = 32


def infonce_batches(n: int, seed: int) -> list[np.ndarray]:
    """The InfoNCE batches of Table 2: a seeded permutation of ``n`` samples cut into :data:`INFONCE_BATCH`s.

    Example:
        >>> [len(b) for b in infonce_batches(70, seed=0)]
        [32, 32, 6]
    """
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x7AB2])).permutation(n)
    return [order[i : i + INFONCE_BATCH] for i in range(0, n, INFONCE_BATCH)]


def compare_embeddings(
    teacher_clean: np.ndarray, noisy: np.ndarray, labels: np.ndarray, margin: float, temperature: float,
    seed: int = 0,
) -> dict[str, float | int]:
    """RMSE, mean cosine similarity and batched InfoNCE between two aligned [N, D] embedding sets.

    InfoNCE is averaged over the batches of :func:`infonce_batches` (seeded by ``seed``) that hold at least
    one anchor (an utterance with a valid negative); batches without one are skipped, and ``anchors``
    counts the anchors used. With no anchor at all, ``infonce`` is NaN.
    """
    h_t, h_s, y = (torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (teacher_clean, noisy, labels))
    infonce, anchors = [], 0
    for indices in infonce_batches(len(h_s), seed):
        batch = torch.from_numpy(indices)
        count = int(margin_negatives(y[batch], margin).any(dim=1).sum())
        if count:
            anchors += count
            infonce.append(contrastive_loss(h_s[batch], h_t[batch], y[batch], margin, temperature))
    return {
        "rmse": float(transfer_loss(h_t, h_s)),
        "cosine": float(F.cosine_similarity(h_t, h_s, dim=-1).mean()),
        "infonce": float(torch.stack(infonce).mean()) if infonce else math.nan,
        "anchors": anchors,
    }


def embedding_metrics(
    models: Mapping[str, Path],
    dev_set: UtteranceSet,
    pool: NoisePool,
    snr_mode: str,
    margin: float,
    temperature: float,
    batch_size: int,
    seed: int = 0,
    recorded: Mapping[str, UtteranceSet] | None = None,
) -> tuple[dict[str, dict[str, dict[str, float | int]]], tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Table 2 for ``models`` ({variant: model dir}; ``original`` is the teacher): the development set mixed with
    ``pool`` per condition (noise draws and InfoNCE batches seeded by ``seed``), or the corpus's own noisy
    recordings of it where ``recorded`` holds the condition.

    Returns the metrics ``{variant: {condition: {rmse, cosine, infonce, anchors}}}`` and, for the projection
    plot, the teacher's clean embeddings with the 0 dB embeddings of ``original`` and of the best
    student (highest mean CCC on the 0 dB development set, see :func:`best_student`).
    """
    teacher, _, _ = load_model(models[TEACHER])
    _, teacher_clean = predict(teacher, dev_set, batch_size)
    table: dict[str, dict[str, dict[str, float | int]]] = {}
    at_0db: dict[str, np.ndarray] = {}
    ccc_0db: dict[str, float] = {}
    for variant, model_dir in models.items():
        model, _, _ = load_model(model_dir)
        table[variant] = {}
        for condition in CONDITIONS:
            view = condition_set(dev_set, condition, seed, pool, snr_mode, (recorded or {}).get(condition))
            pred, emb = predict(model, view, batch_size, use_noisy=view.noise is not None)
            table[variant][condition] = compare_embeddings(teacher_clean, emb, dev_set.labels, margin, temperature, seed)
            if condition == HARDEST:
                at_0db[variant] = emb
                ccc_0db[variant] = float(np.mean(ccc_numpy(pred, dev_set.labels)))
    best = best_student(ccc_0db)
    shown = [TEACHER] if best is None else [TEACHER, best]
    return table, (teacher_clean, {v: at_0db[v] for v in shown})
