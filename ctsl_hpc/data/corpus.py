"""Corpus loaders: MSP-Podcast and a plain CSV manifest, both giving `Utterance` lists per split."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ATTRIBUTES: tuple[str, str, str] = ("arousal", "dominance", "valence")
SPLITS: tuple[str, str, str] = ("train", "dev", "test")
LABEL_MIN, LABEL_MAX = 1.0, 7.0  # the corpora's scale; the model predicts (y - LABEL_MIN) / (LABEL_MAX - LABEL_MIN)

MSP_LABEL_FILES = ("labels_consensus.csv", "labels_concensus.csv")
MSP_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
MSP_KNOWN_SPLITS = ("Train", "Development", "Test1", "Test2", "Test3")
CSV_REQUIRED = ("path", "arousal", "dominance", "valence", "split")


def label_distance_on_model_scale(distance: float) -> float:
    """A distance between labels on the 1..7 scale, on the model's [0, 1] scale.

    Example:
        >>> label_distance_on_model_scale(0.5)  # the InfoNCE margin of the paper
        0.08333333333333333
    """
    return distance / (LABEL_MAX - LABEL_MIN)


class CorpusError(ValueError):
    """A corpus or manifest is missing, malformed, or holds invalid labels."""


@dataclass(frozen=True)
class Utterance:
    """One labelled recording: labels are (arousal, dominance, valence) on the 1..7 scale."""

    path: Path
    labels: tuple[float, float, float]
    split: str
    speaker: str | None = None

    def scaled_labels(self) -> tuple[float, float, float]:
        """Labels mapped to the model's [0, 1] scale, (y - LABEL_MIN) / (LABEL_MAX - LABEL_MIN)."""
        a, d, v = ((y - LABEL_MIN) / (LABEL_MAX - LABEL_MIN) for y in self.labels)
        return (a, d, v)


def _parse_label(raw: str | None, where: str, field: str) -> float:
    try:
        value = float(raw) if raw else math.nan
    except ValueError:
        raise CorpusError(f"{where}: field {field!r} is not a number: {raw!r}") from None
    if math.isnan(value):
        raise CorpusError(f"{where}: field {field!r} is missing or NaN")
    if not LABEL_MIN <= value <= LABEL_MAX:
        raise CorpusError(f"{where}: field {field!r} = {value} is outside {LABEL_MIN:g}..{LABEL_MAX:g}")
    return value


def _read_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise CorpusError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise CorpusError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
        reader.fieldnames = header
        return [{k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()} for row in reader]


def _group(utterances: list[Utterance], source: Path) -> dict[str, list[Utterance]]:
    by_split: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for utt in utterances:
        by_split[utt.split].append(utt)
    empty = [split for split in SPLITS if not by_split[split]]
    if empty:
        raise CorpusError(f"{source}: no {' and no '.join(empty)} rows (every split is needed: train, dev, test)")
    return by_split


def load_csv_manifest(manifest: str | os.PathLike[str]) -> dict[str, list[Utterance]]:
    """Read a manifest with columns path,arousal,dominance,valence,split[,speaker].

    Relative paths resolve against the manifest's folder; every audio file must exist.
    """
    manifest = Path(manifest)
    rows = _read_rows(manifest, CSV_REQUIRED)
    base = manifest.resolve().parent
    utterances, missing = [], []
    for line, row in enumerate(rows, start=2):
        where = f"{manifest} line {line}"
        split = (row.get("split") or "").lower()
        if split not in SPLITS:
            raise CorpusError(f"{where}: field 'split' = {row.get('split')!r} is not one of {', '.join(SPLITS)}")
        if not row.get("path"):
            raise CorpusError(f"{where}: field 'path' is empty")
        path = Path(row["path"])
        path = path if path.is_absolute() else base / path
        labels = tuple(_parse_label(row.get(a), where, a) for a in ATTRIBUTES)
        if not path.is_file():
            missing.append(f"{path} (line {line})")
            continue
        speaker = row.get("speaker") or None
        utterances.append(Utterance(path, labels, split, speaker))  # type: ignore[arg-type]
    _require_found(manifest, missing, len(rows))
    return _group(utterances, manifest)


def _require_found(source: Path, missing: list[str], listed: int) -> None:
    """One error for every listed audio file that does not exist: how many, and the first few."""
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CorpusError(f"{source}: {len(missing)} of {listed} listed audio file(s) not found: "
                          f"{', '.join(missing[:3])}{more}")


def load_msp_podcast(root: str | os.PathLike[str], test_split: str = "Test1") -> dict[str, list[Utterance]]:
    """Read MSP-Podcast: `<root>/Audios/*.wav` and `<root>/Labels/labels_consensus.csv` (or `labels_concensus.csv`).

    Train -> train, Development -> dev, `test_split` (Test1 or Test2) -> test; rows of other splits are skipped.
    """
    root = Path(root)
    if test_split not in MSP_KNOWN_SPLITS[2:]:
        raise CorpusError(f"msp_test_split = {test_split!r} is not one of {', '.join(MSP_KNOWN_SPLITS[2:])}")
    candidates = [root / "Labels" / name for name in MSP_LABEL_FILES]
    label_file = next((p for p in candidates if p.is_file()), None)
    if label_file is None:
        raise CorpusError(f"{root}: no label file; expected one of {', '.join(str(p) for p in candidates)}")
    audio_dir = root / "Audios"
    if not audio_dir.is_dir():
        raise CorpusError(f"{audio_dir}: audio folder not found")
    present = set(os.listdir(audio_dir))
    mapping = {"Train": "train", "Development": "dev", test_split: "test"}
    rows = _read_rows(label_file, MSP_COLUMNS)
    utterances, missing, listed = [], [], 0
    for line, row in enumerate(rows, start=2):
        where = f"{label_file} line {line}"
        raw_split = row.get("Split_Set") or ""
        if raw_split not in MSP_KNOWN_SPLITS:
            raise CorpusError(f"{where}: field 'Split_Set' = {raw_split!r} is not one of {', '.join(MSP_KNOWN_SPLITS)}")
        if raw_split not in mapping:
            continue
        listed += 1
        name = row.get("FileName") or ""
        labels = tuple(_parse_label(row.get(col), where, col) for col in ("EmoAct", "EmoDom", "EmoVal"))
        if name not in present:
            missing.append(f"{audio_dir / name} (line {line})")
            continue
        speaker = row.get("SpkrID") or None
        utterances.append(Utterance(audio_dir / name, labels, mapping[raw_split], speaker))  # type: ignore[arg-type]
    _require_found(label_file, missing, listed)
    return _group(utterances, label_file)


def load_corpus(data_cfg: Any) -> dict[str, list[Utterance]]:
    """Load the corpus named by `data_cfg.corpus` ("msp_podcast", or "csv"/"synthetic" via `data_cfg.manifest`)."""
    corpus = getattr(data_cfg, "corpus", None)
    if corpus == "msp_podcast":
        root = getattr(data_cfg, "root", None)
        if not root:
            raise CorpusError("data.root must be set for corpus 'msp_podcast'")
        return load_msp_podcast(root, getattr(data_cfg, "msp_test_split", "Test1") or "Test1")
    if corpus in ("csv", "synthetic"):
        manifest = getattr(data_cfg, "manifest", None)
        if not manifest:
            raise CorpusError(f"data.manifest must be set for corpus {corpus!r}")
        return load_csv_manifest(manifest)
    raise CorpusError(f"data.corpus = {corpus!r} is not one of 'msp_podcast', 'csv', 'synthetic'")
