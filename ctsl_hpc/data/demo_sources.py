"""The Debian packages the demo is built from, and the demo's noise pools cut from their recordings.

Noise: music and sound effects (fillets-ng-data, sound-theme-freedesktop) and babble summed from
3-5 real talkers (asterisk-core-sounds-en-wav, fillets-ng-data-cs), in 10 s clips; the train, dev
and test pools are cut from disjoint source files, and every clip's sources and licences are
listed in its folder's ``SOURCES.csv``.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..atomic_io import atomic_write_csv
from .audio import resample
from .corpus import SPLITS

SAMPLE_RATE = 16000
PACKAGES = (
    "espeak-ng",
    "sound-theme-freedesktop",
    "asterisk-core-sounds-en-wav",
    "fillets-ng-data",
    "fillets-ng-data-cs",
)
APT_HINT = "apt-get install -y --no-install-recommends " + " ".join(PACKAGES)
FILLETS_LICENCE = "GPL-2"
ASTERISK_LICENCE = "CC-BY-SA-3.0"
FREEDESKTOP_COPYRIGHT = Path("/usr/share/doc/sound-theme-freedesktop/copyright")
NOISE_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
CLIP_SECONDS = 10.0


class DemoCorpusError(RuntimeError):
    """The demo corpus cannot be built (a tool or Debian package is missing, or TTS failed)."""


@dataclass(frozen=True)
class Source:
    """A recording in a Debian package, with the package and its licence."""

    path: str
    package: str
    licence: str


def _package_files(package: str, suffixes: tuple[str, ...]) -> list[str]:
    proc = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DemoCorpusError(f"Debian package {package} is not installed; run: {APT_HINT}")
    return sorted(f for f in proc.stdout.split("\n") if f.endswith(suffixes) and os.path.isfile(f))


def _freedesktop_licences() -> dict[str, str]:
    """File name -> licence from the package's machine-readable copyright file."""
    licences: dict[str, str] = {}
    text = FREEDESKTOP_COPYRIGHT.read_text(errors="replace") if FREEDESKTOP_COPYRIGHT.is_file() else ""
    for stanza in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:(.*)$", stanza, re.M)
        licence = re.search(r"^License:\s*(\S+)", stanza, re.M)
        if files and licence:
            for name in files.group(1).split():
                licences[os.path.basename(name)] = licence.group(1)
    return licences


def collect_noise_sources() -> dict[str, dict[str, list[Source]]]:
    """Per split, per kind (music, effects, talkers_en, talkers_cs): disjoint lists of source files."""
    fillets = _package_files("fillets-ng-data", (".ogg",))
    freedesktop = _package_files("sound-theme-freedesktop", (".oga", ".ogg", ".wav"))
    licences = _freedesktop_licences()
    kinds = {
        "music": [Source(f, "fillets-ng-data", FILLETS_LICENCE) for f in fillets if "/music/" in f],
        "effects": [Source(f, "fillets-ng-data", FILLETS_LICENCE) for f in fillets if "/music/" not in f]
        + [
            Source(f, "sound-theme-freedesktop", licences[os.path.basename(f)])
            for f in freedesktop
            if os.path.basename(f) in licences  # files without a stated licence are left out
        ],
        "talkers_en": [
            Source(f, "asterisk-core-sounds-en-wav", ASTERISK_LICENCE)
            for f in _package_files("asterisk-core-sounds-en-wav", (".wav",))
            if "/silence/" not in f
        ],
        "talkers_cs": [
            Source(f, "fillets-ng-data-cs", FILLETS_LICENCE) for f in _package_files("fillets-ng-data-cs", (".ogg",))
        ],
    }
    by_split: dict[str, dict[str, list[Source]]] = {s: {} for s in SPLITS}
    rng = np.random.default_rng(20231)  # fixed: the split of sources does not depend on the corpus seed
    for kind, files in kinds.items():
        if len(files) < len(SPLITS):
            raise DemoCorpusError(f"too few {kind} noise files ({len(files)}); reinstall: {APT_HINT}")
        order = rng.permutation(len(files))
        n_train = max(1, int(NOISE_SPLIT_FRACTIONS[0] * len(files)))
        n_dev = max(1, int(NOISE_SPLIT_FRACTIONS[1] * len(files)))
        parts = (order[:n_train], order[n_train : n_train + n_dev], order[n_train + n_dev :])
        for split, idx in zip(SPLITS, parts, strict=True):
            by_split[split][kind] = [files[i] for i in sorted(idx)]
    return by_split


class Decoder:
    """Reads sources at 16 kHz mono with silent frames removed, caching each file once."""

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, path: str) -> np.ndarray:
        if path not in self._cache:
            data, rate = sf.read(path, dtype="float32", always_2d=True)
            self._cache[path] = _drop_silence(resample(data.mean(axis=1), rate, SAMPLE_RATE))
        return self._cache[path]


def _drop_silence(wave: np.ndarray, frame: int = 320, floor_db: float = -40.0) -> np.ndarray:
    """Remove 20 ms frames more than `floor_db` below the loudest frame (noise must never be silent)."""
    n = wave.shape[0] // frame
    if n == 0:
        return wave[:0]
    frames = wave[: n * frame].reshape(n, frame)
    energy = np.square(frames).mean(axis=1)
    keep = energy > energy.max() * 10.0 ** (floor_db / 10.0)
    return frames[keep].ravel()


def _stream(
    rng: np.random.Generator, sources: list[Source], decode: Decoder, n: int, used: list[Source]
) -> np.ndarray:
    """n samples of randomly chosen source files played one after another."""
    parts, total = [], 0
    while total < n:
        src = sources[int(rng.integers(len(sources)))]
        wave = decode(src.path)
        if wave.size == 0:
            continue
        parts.append(wave)
        used.append(src)
        total += wave.size
    return np.concatenate(parts)[:n]


def _music_excerpt(rng: np.random.Generator, path: str, n: int) -> np.ndarray:
    """n samples of a music file from a random start (only that part is decoded; quiet parts looped over)."""
    info = sf.info(path)
    want = int(np.ceil(n * info.samplerate / SAMPLE_RATE))
    start = int(rng.integers(0, max(1, info.frames - want)))
    data, rate = sf.read(path, start=start, frames=want, dtype="float32", always_2d=True)
    wave = _drop_silence(resample(data.mean(axis=1), rate, SAMPLE_RATE))
    if wave.size == 0:
        raise DemoCorpusError(f"{path}: no audible music at {start / rate:.1f} s")
    return np.resize(wave, n)


def _unit_rms(wave: np.ndarray) -> np.ndarray:
    return wave / max(float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))), 1e-9)


def build_noise_split(
    folder: Path, sources: dict[str, list[Source]], minutes: float, rng: np.random.Generator
) -> None:
    """Write ~`minutes` of 10 s clips cycling music / effects / babble, with SOURCES.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    decode = Decoder()
    n = int(CLIP_SECONDS * SAMPLE_RATE)
    n_clips = max(3, int(round(minutes * 60 / CLIP_SECONDS)))
    rows: list[tuple[str, str, str, str, str]] = []
    kinds = ("music", "effects", "babble")
    for k in range(n_clips):
        kind = kinds[k % 3]
        used: list[Source] = []
        if kind == "music":
            src = sources["music"][(k // 3) % len(sources["music"])]
            clip = _music_excerpt(rng, src.path, n)
            used.append(src)
        elif kind == "effects":
            clip = _stream(rng, sources["effects"], decode, n, used)
        else:
            talkers = int(rng.integers(3, 6))
            streams = [_stream(rng, sources["talkers_en"], decode, n, used)]
            streams += [_stream(rng, sources["talkers_cs"], decode, n, used) for _ in range(talkers - 1)]
            clip = np.sum([_unit_rms(s) for s in streams], axis=0)
        clip = np.clip(0.1 * _unit_rms(clip), -1.0, 1.0).astype(np.float32)
        name = f"{k:03d}_{kind}.wav"
        sf.write(folder / name, clip, SAMPLE_RATE, subtype="PCM_16")
        for src in dict.fromkeys(used):
            rows.append((name, kind, src.package, src.path, src.licence))
    atomic_write_csv(folder / "SOURCES.csv", ["clip", "kind", "package", "source", "licence"], rows)
