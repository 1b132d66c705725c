"""Predict arousal, dominance and valence (1..7) for audio files with a saved model.

Each file is read at 16 kHz mono, z-normalised with the model's saved waveform statistics and cut
into windows (``window_s`` long, every ``hop_s``); a final piece shorter than ``min_last_s`` is
merged into the chunk before it. Chunks of all files are run in padded, masked batches; the model's
[0, 1] outputs are mapped to the 1..7 label scale (``6 p + 1``, clipped) per chunk, and each file
gets the duration-weighted mean of its chunks.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from ctsl_hpc.data.audio import AUDIO_SUFFIXES, AudioError, WaveformStats, audio_files, read_audio
from ctsl_hpc.data.corpus import ATTRIBUTES, LABEL_MAX, LABEL_MIN
from ctsl_hpc.model import WEIGHTS_FILE, EmotionModel, load_model
from ctsl_hpc.workdir import RunDir

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_FILE_SECONDS = 0.1  # shorter files give wav2vec2 too few frames to pool
CSV_COLUMNS = ("file", "chunk", "start_s", "end_s", *ATTRIBUTES)


class PredictError(ValueError):
    """An input (model directory, audio file, folder or list) cannot be used; the message names it."""


@dataclass(frozen=True)
class ChunkPrediction:
    """One chunk of a file: its span in seconds and arousal, dominance, valence on the 1..7 scale."""

    start_s: float
    end_s: float
    values: np.ndarray  # [3], ATTRIBUTES order

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class FilePrediction:
    """The predictions for one file: per chunk and their duration-weighted mean.

    With ``skip_bad``, a file that could not be read has ``error`` set and no chunks.
    """

    path: Path
    duration_s: float = 0.0
    chunks: list[ChunkPrediction] = field(default_factory=list)
    error: str | None = None

    @property
    def mean(self) -> np.ndarray:
        """Duration-weighted mean of the chunk values ([3], 1..7 scale)."""
        if not self.chunks:
            raise ValueError(f"{self.path}: no predictions ({self.error or 'no chunks'})")
        weights = np.array([c.duration_s for c in self.chunks])
        return np.average(np.stack([c.values for c in self.chunks]), axis=0, weights=weights)


# --------------------------------------------------------------------------- inputs


def chunk_bounds(
    n_samples: int, sample_rate: int, window_s: float, hop_s: float, min_last_s: float = 1.0
) -> list[tuple[int, int]]:
    """Sample spans ``[start, end)`` covering ``n_samples``: starts every hop, each at most a window long.

    The last chunk runs to the end of the recording; when it would be shorter than ``min_last_s``
    (and is not the only one) it is merged into the previous chunk, which then ends at the end.

    Args:
        n_samples: the recording's length in samples (>= 1).
        sample_rate: samples per second.
        window_s: the longest chunk, in seconds (> 0).
        hop_s: seconds between chunk starts (0 < hop_s <= window_s: no audio is skipped).
        min_last_s: a shorter last piece joins the chunk before it.

    Returns:
        ``[(start, end), ...]`` in samples, in order, covering ``[0, n_samples)``.

    Example:
        >>> chunk_bounds(25, 1, window_s=10, hop_s=5)
        [(0, 10), (5, 15), (10, 20), (15, 25)]
        >>> chunk_bounds(21, 1, window_s=10, hop_s=10, min_last_s=2)  # the 1 s tail joins the last chunk
        [(0, 10), (10, 21)]
    """
    if window_s <= 0 or hop_s <= 0:
        raise ValueError(f"window and hop must be positive, got window {window_s} s, hop {hop_s} s")
    if hop_s > window_s:
        raise ValueError(f"hop ({hop_s} s) longer than the window ({window_s} s) would skip audio")
    if n_samples < 1:
        raise ValueError("cannot cut an empty recording into chunks")
    window, hop = round(window_s * sample_rate), round(hop_s * sample_rate)
    bounds = []
    start = 0
    while True:
        end = min(start + window, n_samples)
        bounds.append((start, end))
        if end == n_samples:
            break
        start += hop
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_last_s * sample_rate:
        bounds.pop()
        bounds[-1] = (bounds[-1][0], n_samples)
    return bounds


def _files_in_folder(folder: Path) -> list[Path]:
    files = audio_files(folder)
    if not files:
        raise PredictError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
    return files


def _files_in_list(table: Path) -> list[Path]:
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "path" not in header:
            raise PredictError(f"{table}: needs a 'path' column (found: {', '.join(header) or 'no header'})")
        reader.fieldnames = header
        base = table.resolve().parent
        files = []
        for line, row in enumerate(reader, start=2):
            raw = (row.get("path") or "").strip()
            if not raw:
                raise PredictError(f"{table} line {line}: field 'path' is empty")
            path = Path(raw)
            files.append(path if path.is_absolute() else base / path)
    if not files:
        raise PredictError(f"{table}: no rows")
    return files


def collect_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand command-line inputs: audio files as given, folders (recursively) and ``.csv`` lists.

    A ``.csv`` needs a ``path`` column; relative paths resolve against the CSV's folder. Files are
    not checked here: a missing or unreadable file is reported when it is read.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += _files_in_folder(path)
        elif path.suffix.lower() == ".csv" and path.is_file():
            files += _files_in_list(path)
        else:
            files.append(path)
    if not files:
        raise PredictError("no input files")
    return files


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """A model directory, or a finished training stage (its ``DONE`` summary names the best model)."""
    path = Path(path)
    if not path.is_dir():
        raise PredictError(f"{path}: model directory not found")
    if not (path / WEIGHTS_FILE).is_file():
        summary = RunDir(path).summary()
        if summary is not None:
            return summary.best_dir
    return path


# --------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class _Chunk:
    file: int
    start: int
    end: int
    wave: np.ndarray


def _chunks(
    results: list[FilePrediction],
    stats: WaveformStats | None,
    window_s: float,
    hop_s: float,
    min_last_s: float,
    skip_bad: bool,
) -> Iterator[_Chunk]:
    """Read each file lazily and yield its normalised chunks; bad files raise or are marked in ``results``."""
    for index, result in enumerate(results):
        try:
            if not result.path.is_file():
                raise AudioError(f"{result.path}: file not found")
            wave = read_audio(result.path, SAMPLE_RATE, min_seconds=MIN_FILE_SECONDS)
        except AudioError as error:
            if not skip_bad:
                raise PredictError(str(error)) from error
            log.warning("skipping %s", error)
            result.error = str(error)
            continue
        if stats is not None:
            wave = stats.normalise(wave)
        result.duration_s = wave.shape[0] / SAMPLE_RATE
        for start, end in chunk_bounds(wave.shape[0], SAMPLE_RATE, window_s, hop_s, min_last_s):
            yield _Chunk(index, start, end, wave[start:end])


@torch.no_grad()
def predict_waves(model: EmotionModel, waves: Sequence[np.ndarray]) -> np.ndarray:
    """Model outputs [B, 3] on the 1..7 scale for one batch of (normalised) waves, padded and masked."""
    device = next(model.parameters()).device
    tensors = [torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)) for w in waves]
    lengths = torch.tensor([len(t) for t in tensors])
    wave = pad_sequence(tensors, batch_first=True)
    mask = torch.arange(wave.shape[1])[None, :] < lengths[:, None]
    pred = model(wave.to(device), mask.to(device)).pred.float().cpu().numpy()
    return np.clip(pred * (LABEL_MAX - LABEL_MIN) + LABEL_MIN, LABEL_MIN, LABEL_MAX)


def predict_files(
    model_dir: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    window_s: float = 10.0,
    hop_s: float = 5.0,
    batch_size: int = 8,
    *,
    min_last_s: float = 1.0,
    skip_bad: bool = False,
    device: str | None = None,
) -> list[FilePrediction]:
    """Arousal, dominance and valence (1..7) per chunk and per file, in the order of ``paths``.

    ``model_dir`` is a directory written by :func:`ctsl_hpc.model.save_model` (or a finished training
    stage). A missing or unreadable file raises :class:`PredictError` naming it; with ``skip_bad``
    it is returned with ``error`` set instead. ``device`` defaults to CUDA when available.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    chunk_bounds(1, SAMPLE_RATE, window_s, hop_s)  # validate window and hop before loading anything
    model, stats, _ = load_model(resolve_model_dir(model_dir))
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results = [FilePrediction(Path(p)) for p in paths]
    pending: list[_Chunk] = []

    def run(batch: list[_Chunk]) -> None:
        for chunk, values in zip(batch, predict_waves(model, [c.wave for c in batch]), strict=True):
            results[chunk.file].chunks.append(
                ChunkPrediction(chunk.start / SAMPLE_RATE, chunk.end / SAMPLE_RATE, values.astype(np.float64))
            )

    for chunk in _chunks(results, stats, window_s, hop_s, min_last_s, skip_bad):
        pending.append(chunk)
        if len(pending) == batch_size:
            run(pending)
            pending = []
    if pending:
        run(pending)
    return results


# --------------------------------------------------------------------------- output


def _rows(results: Sequence[FilePrediction]) -> Iterator[list[str]]:
    for result in results:
        if result.error is not None:
            continue
        for index, chunk in enumerate(result.chunks):
            yield [str(result.path), str(index), f"{chunk.start_s:.3f}", f"{chunk.end_s:.3f}",
                   *(f"{v:.4f}" for v in chunk.values)]
        yield [str(result.path), "mean", "0.000", f"{result.duration_s:.3f}", *(f"{v:.4f}" for v in result.mean)]


def write_csv(results: Sequence[FilePrediction], path: str | os.PathLike[str]) -> Path:
    """One row per chunk and a ``mean`` row per file (columns :data:`CSV_COLUMNS`); bad files are left out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(_rows(results))
    return path


def write_json(results: Sequence[FilePrediction], path: str | os.PathLike[str]) -> Path:
    """``[{"file", "duration_s", "mean": {attr: v}, "chunks": [{"start_s", "end_s", attr: v}], "error"}]``."""
    data = []
    for r in results:
        entry: dict = {"file": str(r.path), "duration_s": r.duration_s, "error": r.error}
        if r.error is None:
            entry["mean"] = dict(zip(ATTRIBUTES, map(float, r.mean), strict=True))
            entry["chunks"] = [
                {"start_s": c.start_s, "end_s": c.end_s, **dict(zip(ATTRIBUTES, map(float, c.values), strict=True))}
                for c in r.chunks
            ]
        data.append(entry)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def print_table(results: Sequence[FilePrediction], out: TextIO | None = None) -> None:
    """A readable table (to ``out``, default stdout): per file its chunks, then the mean."""
    out = out or sys.stdout
    header = f"{'chunk':>6} {'start_s':>9} {'end_s':>9} " + " ".join(f"{a:>9}" for a in ATTRIBUTES)
    for result in results:
        if result.error is not None:
            print(f"SKIPPED {result.error}", file=out)
            continue
        print(f"{result.path} ({result.duration_s:.2f} s)", file=out)
        print(header, file=out)
        for index, c in enumerate(result.chunks):
            values = " ".join(f"{v:9.3f}" for v in c.values)
            print(f"{index:>6} {c.start_s:9.2f} {c.end_s:9.2f} {values}", file=out)
        values = " ".join(f"{v:9.3f}" for v in result.mean)
        print(f"{'mean':>6} {0.0:9.2f} {result.duration_s:9.2f} {values}", file=out)
        print(file=out)


def run_cli(
    model: str, inputs: Sequence[str], out: str, json_out: str | None, window_s: float, hop_s: float,
    batch_size: int, skip_bad: bool,
) -> int:
    """The ``predict`` command: 0 when every file was predicted, 1 on an error or skipped files."""
    try:
        results = predict_files(
            model, collect_inputs(inputs), window_s, hop_s, batch_size, skip_bad=skip_bad
        )
    except (PredictError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_table(results)
    print(f"wrote {write_csv(results, out)}")
    if json_out:
        print(f"wrote {write_json(results, json_out)}")
    bad = [r for r in results if r.error is not None]
    if bad:
        print(f"{len(bad)} of {len(results)} file(s) skipped:", file=sys.stderr)
        for r in bad:
            print(f"  {r.error}", file=sys.stderr)
    return 1 if bad else 0
