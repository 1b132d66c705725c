"""Every utterance checked before any training: decoded as training reads it, remembered per file.

A corrupt, silent or too short file in the test split used to surface after the teacher and every
student had trained. :func:`audit` decodes each file the way training reads it (the crop to
``max_seconds``, the silence and length checks of :func:`~ctsl_hpc.data.audio.read_audio`), one at
a time, and keeps the verdict with the file's size and modification time in a cache file, so a rerun
decodes only what changed. The file's content hash comes along: the corpus fingerprint is made of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic_io import atomic_write_json
from .audio import AudioError, read_audio
from .corpus import Utterance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioVerdict:
    """One file as training would read it: its content hash, and why it is unusable (None: usable)."""

    digest: str
    problem: str | None


def _stamp(path: Path, reading: tuple[int, float | None, float]) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, *reading]


def audit(
    utterances: Sequence[Utterance], sample_rate: int, max_seconds: float | None, min_seconds: float, cache: Path
) -> dict[str, AudioVerdict]:
    """A verdict per file of ``utterances``, reusing ``cache`` for files unchanged since (size and mtime)."""
    reading = (sample_rate, max_seconds, min_seconds)
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        known = {}  # a damaged cache only costs a new check
    verdicts: dict[str, AudioVerdict] = {}
    fresh = 0
    for utt in utterances:
        name = str(utt.path)
        try:
            stamp = _stamp(utt.path, reading)
        except OSError as exc:
            verdicts[name] = AudioVerdict("", f"{utt.path}: cannot read ({exc.strerror})")
            continue
        entry = known.get(name)
        if entry is not None and entry["stamp"] == stamp:
            verdicts[name] = AudioVerdict(entry["digest"], entry["problem"])
            continue
        try:
            read_audio(utt.path, sample_rate, max_seconds, min_seconds)
            problem = None
        except AudioError as exc:
            problem = str(exc)
        digest = hashlib.sha256(utt.path.read_bytes()).hexdigest()
        verdicts[name] = AudioVerdict(digest, problem)
        known[name] = {"stamp": stamp, "digest": digest, "problem": problem}
        fresh += 1
    if fresh:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, known)
        log.info("checked %d audio file(s) (%d known from %s)", fresh, len(utterances) - fresh, cache)
    return verdicts


def fingerprint(splits: dict[str, list[Utterance]], verdicts: dict[str, AudioVerdict]) -> str:
    """A 16-hex content hash of the corpus: every utterance's split, labels and audio bytes.

    Example:
        >>> fingerprint({}, {})
        '44136fa355b3678a'
    """
    digest = hashlib.sha256()
    for split in sorted(splits):
        for utt in splits[split]:
            line = [split, os.path.basename(utt.path), *utt.labels, verdicts[str(utt.path)].digest]
            digest.update(json.dumps(line).encode())
    return digest.hexdigest()[:16]
