"""The per-utterance test predictions of every scored checkpoint, and the metrics of a group from them.

One file per checkpoint (``ReportFiles.prediction_file(variant, epoch)``): the test labels and, per
scored (condition, group), the group's utterance indices and the model's predictions for them,
all on the 1..7 label scale. The report's per-group CCC, Pearson r and mean bias are computed from
exactly these arrays (:func:`group_metrics`), so any of them can be recomputed from the files.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctsl_hpc.atomic_io import atomic_write_bytes
from ctsl_hpc.data.conditions import CONDITIONS
from ctsl_hpc.evaluate.metrics import bias_numpy, ccc_numpy, pearson_numpy
from ctsl_hpc.workdir import ReportFiles

_LABELS = "labels"


@dataclass
class ModelPredictions:
    """One checkpoint's test predictions: labels [N, 3] and, per (condition, group), (indices [n], predictions [n, 3])."""

    labels: np.ndarray
    groups: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def add(self, condition: str, group: int, indices: np.ndarray, pred: np.ndarray) -> None:
        """Keep the predictions ``pred`` [n, 3] of the utterances ``indices`` under (condition, group)."""
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
        indices = np.asarray(indices, dtype=np.int64)
        pred = np.asarray(pred, dtype=np.float32)
        if pred.shape != (indices.size, self.labels.shape[1]):
            raise ValueError(f"predictions of {condition}/{group}: shape {pred.shape}, expected ({indices.size}, 3)")
        self.groups[condition, int(group)] = (indices, pred)

    def pooled(self, condition: str) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, labels) of every group of ``condition``, concatenated (empty when none)."""
        parts = [(p, self.labels[i]) for (c, _), (i, p) in sorted(self.groups.items()) if c == condition]
        if not parts:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
        return np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts])


def group_metrics(pred: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """CCC, Pearson r and mean bias per attribute of one group (predictions and labels on the 1..7 scale)."""
    return {"ccc": ccc_numpy(pred, labels), "r": pearson_numpy(pred, labels), "bias": bias_numpy(pred, labels)}


def save_predictions(path: Path, predictions: ModelPredictions) -> Path:
    """Write ``predictions`` to ``path`` (an ``.npz``) atomically."""
    arrays = {_LABELS: np.asarray(predictions.labels, dtype=np.float32)}
    for (condition, group), (indices, pred) in predictions.groups.items():
        arrays[f"{condition}/{group}/index"] = indices
        arrays[f"{condition}/{group}/pred"] = pred
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buffer.getvalue())


def load_predictions(path: Path) -> ModelPredictions:
    """Read a file written by :func:`save_predictions`; a malformed file raises ValueError naming it."""
    with np.load(path, allow_pickle=False) as data:
        if _LABELS not in data.files:
            raise ValueError(f"{path}: no {_LABELS!r} array")
        loaded = ModelPredictions(data[_LABELS])
        for key in data.files:
            if key.endswith("/index"):
                condition, group, _ = key.split("/")
                try:
                    loaded.add(condition, int(group), data[key], data[f"{condition}/{group}/pred"])
                except (KeyError, ValueError) as error:
                    raise ValueError(f"{path}: {error}") from error
    return loaded


def read_predictions(files: ReportFiles) -> dict[str, dict[int, ModelPredictions]]:
    """Every saved checkpoint's predictions of a report folder: {variant: {epoch: predictions}}."""
    return {v: {e: load_predictions(p) for e, p in by_epoch.items()} for v, by_epoch in files.prediction_files().items()}
