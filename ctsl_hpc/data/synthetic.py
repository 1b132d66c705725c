"""The embedded demo: an espeak-ng prosody corpus with exact labels, and noise pools from Debian recordings.

Labels (1..7) are exact functions of the TTS prosody parameters, drawn independently per utterance:
  arousal   = 1 + 6 * (u_rate + u_amplitude) / 2          (faster and louder = more aroused)
  dominance = 1 + 6 * (1 - u_pitch)                       (lower pitch = more dominant)
  valence   = 1 + 6 * (0.6 * u_range + 0.4 * (1 - u_gap)) (livelier intonation, fewer pauses = more positive)
where each u_* in [0, 1] is the parameter's position in its range (PROSODY). Voices and sentences are
drawn independently of the labels. Noise: music and sound effects (fillets-ng-data,
sound-theme-freedesktop) and babble summed from 3-5 real talkers (asterisk-core-sounds-en-wav,
fillets-ng-data-cs), with train/dev/test pools cut from disjoint source files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from .audio import resample
from .corpus import SPLITS

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FORMAT_VERSION = 1
MARKER = "COMPLETE.json"

# espeak-ng parameter ranges: rate (-s, words/min), amplitude (-a), pitch (-p, 0..99),
# pitch range (SSML prosody range, % of the voice's default), word gap (-g, units of 10 ms)
PROSODY: dict[str, tuple[float, float]] = {
    "rate": (120.0, 240.0),
    "amplitude": (25.0, 110.0),
    "pitch": (10.0, 90.0),
    "range": (20.0, 200.0),
    "gap": (0.0, 12.0),
}
VOICES = ("en+f2", "en+m3", "en+f3", "en+m4", "en+f4", "en+m1", "en+f1", "en+m7")
SENTENCES = (
    "The meeting starts at nine in the morning.",
    "Please put the books back on the shelf.",
    "The train to the city leaves every hour.",
    "We moved the table next to the window.",
    "The report will be ready by noon tomorrow.",
    "She walked to the store to buy some bread.",
    "The river runs through the middle of the town.",
    "He left his umbrella in the car again.",
    "The garden needs water after a dry week.",
    "They painted the kitchen a light shade of blue.",
    "The library closes early on Sunday afternoons.",
    "Our neighbours have two cats and a small dog.",
    "The bus was a few minutes late today.",
    "I will send you the file later this evening.",
    "The old bridge was repaired last summer.",
    "Turn left at the second traffic light.",
    "The museum has a new exhibition about ships.",
    "Dinner is usually served at seven.",
    "The printer on the second floor is out of paper.",
    "We need three more chairs for the guests.",
    "The weather will change later in the week.",
    "Fresh vegetables arrive at the market on Fridays.",
    "The children played in the park until dark.",
    "He writes a short note in his diary every night.",
    "The shop on the corner sells newspapers and coffee.",
    "The package was delivered to the wrong address.",
    "My brother is learning to play the piano.",
    "The lights in the hallway turn off automatically.",
    "A new road is being built near the school.",
    "The keys are in the drawer by the door.",
)

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
class DemoCorpus:
    """Where the built demo lives: a CSV manifest and one noise folder per split."""

    manifest: Path
    noise_train: Path
    noise_dev: Path
    noise_test: Path


@dataclass(frozen=True)
class _Spec:
    index: int
    text: str
    voice: str
    params: dict[str, float]
    split: str

    def labels(self) -> tuple[float, float, float]:
        u = {k: (self.params[k] - lo) / (hi - lo) for k, (lo, hi) in PROSODY.items()}
        arousal = 1.0 + 6.0 * (u["rate"] + u["amplitude"]) / 2.0
        dominance = 1.0 + 6.0 * (1.0 - u["pitch"])
        valence = 1.0 + 6.0 * (0.6 * u["range"] + 0.4 * (1.0 - u["gap"]))
        return (arousal, dominance, valence)


def build_demo_corpus(
    out_dir: str | os.PathLike[str],
    cfg: Any = None,
    *,
    n_utterances: int = 600,
    seed: int = 0,
    max_voices: int = 6,
    noise_minutes: tuple[float, float, float] = (6.0, 2.0, 2.0),
    workers: int | None = None,
) -> DemoCorpus:
    """Build (or reuse, when `out_dir` holds a complete build with the same parameters) the demo corpus.

    `cfg`, when given, is any object with attributes `utterances`, `seed`, `max_voices` (the config's
    `synthetic` section); its values override the keyword arguments. Writes `out_dir/audio/*.wav`
    (16 kHz mono), `out_dir/manifest.csv` (path,arousal,dominance,valence,split,speaker; 70/15/15 by
    utterance), `out_dir/prosody.csv` (the generating parameters) and `out_dir/noise/{train,dev,test}/*.wav`
    (10 s clips cycling music / effects / babble) each with a `SOURCES.csv` (clip, kind, package, source,
    licence). TTS runs as parallel espeak-ng processes (`workers` threads driving them).
    """
    if cfg is not None:
        n_utterances = int(getattr(cfg, "utterances", n_utterances))
        seed = int(getattr(cfg, "seed", seed))
        max_voices = int(getattr(cfg, "max_voices", max_voices))
    if n_utterances < 3:
        raise ValueError(f"synthetic.utterances must be >= 3, got {n_utterances}")
    if not 1 <= max_voices <= len(VOICES):
        raise ValueError(f"synthetic.max_voices must be in 1..{len(VOICES)}, got {max_voices}")
    out_dir = Path(out_dir)
    result = DemoCorpus(out_dir / "manifest.csv", *(out_dir / "noise" / s for s in SPLITS))
    params = {
        "version": FORMAT_VERSION,
        "n_utterances": n_utterances,
        "seed": seed,
        "max_voices": max_voices,
        "noise_minutes": list(noise_minutes),
    }
    marker = out_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return result
    _check_tools()
    marker.unlink(missing_ok=True)
    for stale in (out_dir / "audio", out_dir / "noise"):
        shutil.rmtree(stale, ignore_errors=True)
    (out_dir / "audio").mkdir(parents=True)
    specs = _draw_specs(n_utterances, seed, max_voices)
    sources = _collect_noise_sources()  # fails fast, before any TTS, when a noise package is missing
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_synthesise, spec, out_dir / "audio") for spec in specs]
        folders = (result.noise_train, result.noise_dev, result.noise_test)
        for i, (split, minutes, folder) in enumerate(zip(SPLITS, noise_minutes, folders, strict=True)):
            _build_noise_split(folder, sources[split], minutes, np.random.default_rng([seed, 7, i]))
        for future in futures:
            future.result()
    _write_manifest(result.manifest, specs)
    marker.write_text(json.dumps(params))
    log.info("demo corpus built in %s (%d utterances)", out_dir, n_utterances)
    return result


def _check_tools() -> None:
    if shutil.which("espeak-ng") is None:
        raise DemoCorpusError(f"espeak-ng is not installed; run: {APT_HINT}")
    if shutil.which("dpkg-query") is None:
        raise DemoCorpusError("the demo noise is built from Debian packages, but dpkg-query is missing (not Debian?)")


def _draw_specs(n: int, seed: int, max_voices: int) -> list[_Spec]:
    rng = np.random.default_rng([seed, 1])
    voices = VOICES[:max_voices]
    values = {k: rng.uniform(lo, hi, size=n) for k, (lo, hi) in PROSODY.items()}
    voice_idx = rng.integers(0, len(voices), size=n)
    text_idx = rng.integers(0, len(SENTENCES), size=n)
    order = rng.permutation(n)
    n_train, n_dev = int(round(0.7 * n)), int(round(0.15 * n))
    split_of = np.empty(n, dtype=object)
    split_of[order[:n_train]] = "train"
    split_of[order[n_train : n_train + n_dev]] = "dev"
    split_of[order[n_train + n_dev :]] = "test"
    return [
        _Spec(
            index=i,
            text=SENTENCES[text_idx[i]],
            voice=voices[voice_idx[i]],
            params={k: round(float(v[i]), 1) for k, v in values.items()},
            split=str(split_of[i]),
        )
        for i in range(n)
    ]


def _synthesise(spec: _Spec, audio_dir: Path) -> None:
    p = spec.params
    ssml = f'<speak><prosody range="{p["range"]:.0f}%">{spec.text}</prosody></speak>'
    cmd = ["espeak-ng", "--stdout", "-m", "-v", spec.voice, "-s", f"{p['rate']:.0f}", "-p", f"{p['pitch']:.0f}",
           "-a", f"{p['amplitude']:.0f}", "-g", f"{p['gap']:.0f}", ssml]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise DemoCorpusError(f"espeak-ng failed for utterance {spec.index}: {proc.stderr.decode(errors='replace')}")
    wave, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    wave = np.clip(resample(wave, rate, SAMPLE_RATE), -1.0, 1.0)
    sf.write(audio_dir / f"utt_{spec.index:05d}.wav", wave, SAMPLE_RATE, subtype="PCM_16")


def _write_manifest(path: Path, specs: list[_Spec]) -> None:
    """Write the manifest, and next to it `prosody.csv` with each utterance's text, voice and TTS parameters."""
    with open(path.parent / "prosody.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "text", "voice", *PROSODY])
        for spec in specs:
            writer.writerow(
                [f"audio/utt_{spec.index:05d}.wav", spec.text, spec.voice, *(spec.params[k] for k in PROSODY)]
            )
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "arousal", "dominance", "valence", "split", "speaker"])
        for spec in specs:
            labels = [f"{y:.4f}" for y in spec.labels()]
            writer.writerow([f"audio/utt_{spec.index:05d}.wav", *labels, spec.split, spec.voice])
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class _Source:
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


def _collect_noise_sources() -> dict[str, dict[str, list[_Source]]]:
    """Per split, per kind (music, effects, talkers_en, talkers_cs): disjoint lists of source files."""
    fillets = _package_files("fillets-ng-data", (".ogg",))
    freedesktop = _package_files("sound-theme-freedesktop", (".oga", ".ogg", ".wav"))
    licences = _freedesktop_licences()
    kinds = {
        "music": [_Source(f, "fillets-ng-data", FILLETS_LICENCE) for f in fillets if "/music/" in f],
        "effects": [_Source(f, "fillets-ng-data", FILLETS_LICENCE) for f in fillets if "/music/" not in f]
        + [
            _Source(f, "sound-theme-freedesktop", licences[os.path.basename(f)])
            for f in freedesktop
            if os.path.basename(f) in licences  # files without a stated licence are left out
        ],
        "talkers_en": [
            _Source(f, "asterisk-core-sounds-en-wav", ASTERISK_LICENCE)
            for f in _package_files("asterisk-core-sounds-en-wav", (".wav",))
            if "/silence/" not in f
        ],
        "talkers_cs": [
            _Source(f, "fillets-ng-data-cs", FILLETS_LICENCE) for f in _package_files("fillets-ng-data-cs", (".ogg",))
        ],
    }
    by_split: dict[str, dict[str, list[_Source]]] = {s: {} for s in SPLITS}
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


class _Decoder:
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
    rng: np.random.Generator, sources: list[_Source], decode: _Decoder, n: int, used: list[_Source]
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


def _build_noise_split(
    folder: Path, sources: dict[str, list[_Source]], minutes: float, rng: np.random.Generator
) -> None:
    """Write ~`minutes` of 10 s clips cycling music / effects / babble, with SOURCES.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    decode = _Decoder()
    n = int(CLIP_SECONDS * SAMPLE_RATE)
    n_clips = max(3, int(round(minutes * 60 / CLIP_SECONDS)))
    rows: list[tuple[str, str, str, str, str]] = []
    kinds = ("music", "effects", "babble")
    for k in range(n_clips):
        kind = kinds[k % 3]
        used: list[_Source] = []
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
    with open(folder / "SOURCES.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["clip", "kind", "package", "source", "licence"])
        writer.writerows(rows)
