"""Batched inference over a dataset: predictions and pooled embeddings in dataset order."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ctsl_hpc.data.batching import LengthBucketSampler, UtteranceSet, collate
from ctsl_hpc.model import EmotionModel


@torch.no_grad()
def predict(
    model: EmotionModel, dataset: UtteranceSet, batch_size: int, use_noisy: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` (in eval mode) over ``dataset``: (pred [N, 3], embedding [N, D]) float32.

    Batches are length-sorted to keep padding small; results come back in dataset order.
    ``use_noisy`` feeds the dataset's noisy waveforms instead of the clean ones.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sampler = LengthBucketSampler(dataset.lengths, batch_size, seed=0, shuffle=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    preds = np.zeros((len(dataset), 3), dtype=np.float32)
    embeddings = np.zeros((len(dataset), model.embedding_dim), dtype=np.float32)
    amp = torch.bfloat16 if device.type == "cuda" else None
    for batch in loader:
        wave = batch["noisy"] if use_noisy else batch["clean"]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(wave.to(device), batch["mask"].to(device))
        index = batch["index"].numpy()
        preds[index] = out.pred.float().cpu().numpy()
        embeddings[index] = out.embedding.float().cpu().numpy()
    model.train(was_training)
    return preds, embeddings
