"""Speech and noise to pre-train the demo's tiny wav2vec2 on, none of it heard in the demo.

Real speech: the Debian recordings the demo's babble is summed from (asterisk-core-sounds-en-wav,
fillets-ng-data-cs). Only the candidates of the demo's *training* noise split are taken (so no demo
seed's development or test babble can contain one of them), minus every file that a built demo's
noise pools actually use (their ``SOURCES.csv``). TTS: espeak-ng with voices the demo never uses
(other accents and variants), reading sentences of the licence texts in ``/usr/share/common-licenses``
(never one of the demo's sentences). Noise: clips cut like the demo's (music, effects, babble) from
the training split's music and effects and from the speech above: disjoint from the demo's
development and test noise.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .demo_sources import SAMPLE_RATE, Decoder, DemoCorpusError, Source, build_noise_split, collect_noise_sources
from .synthetic import PROSODY, SENTENCES, VOICES, TtsSpec, espeak_env, synthesise

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER = "COMPLETE.json"
PRETRAIN_VOICES = (
    "en-us+m2", "en-us+f5", "en-gb-scotland+m5", "en-gb-scotland+klatt3", "en-029+m6", "en-029+Annie",
    "en-us-nyc+m8", "en-us-nyc+grandma", "en-gb-x-rp+klatt2", "en-gb-x-rp+Andy",
)  # fmt: skip
LICENCE_DIR = Path("/usr/share/common-licenses")
LICENCE_TEXTS = ("GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "LGPL-2.1", "Artistic", "CC0-1.0")
MIN_SECONDS = 0.5  # shorter real recordings (after silence removal) are left out


@dataclass(frozen=True)
class PretrainCorpus:
    """The built corpus: speech files (16 kHz mono WAV), a noise folder and what went into them."""

    speech: list[Path]
    noise: Path
    summary: dict[str, float]


def used_noise_sources(noise_dirs: Iterable[Path]) -> set[str]:
    """Every source file listed in the ``SOURCES.csv`` of the given noise folders."""
    used: set[str] = set()
    for folder in noise_dirs:
        listing = Path(folder) / "SOURCES.csv"
        if not listing.is_file():
            raise DemoCorpusError(f"{listing}: not found; build the demo corpus first")
        with open(listing, newline="") as handle:
            used.update(row["source"] for row in csv.DictReader(handle))
    return used


def real_speech_sources(demo_noise_dirs: Iterable[Path]) -> list[Source]:
    """The recordings no demo noise pool can hold: the training split's talkers minus those the pools use."""
    train = collect_noise_sources()["train"]
    used = used_noise_sources(demo_noise_dirs)
    return [s for kind in ("talkers_en", "talkers_cs") for s in train[kind] if s.path not in used]


def licence_sentences(exclude: Iterable[str] = SENTENCES) -> list[str]:
    """Sentences of 6 to 24 plain words from the licence texts, without the excluded ones, deduplicated."""
    excluded = {s.lower() for s in exclude}
    sentences: dict[str, None] = {}
    for name in LICENCE_TEXTS:
        path = LICENCE_DIR / name
        if not path.is_file():
            continue
        text = re.sub(r"\s+", " ", path.read_text(errors="replace"))
        for sentence in re.split(r"(?<=[.;:])\s+", text):
            sentence = sentence.strip()
            words = sentence.split()
            if 6 <= len(words) <= 24 and re.fullmatch(r"[A-Za-z ,'.;:-]+", sentence) and sentence.lower() not in excluded:
                sentences[sentence] = None
    if len(sentences) < 50:
        raise DemoCorpusError(f"{LICENCE_DIR}: fewer than 50 usable sentences (is base-files installed?)")
    return list(sentences)


def _tts_specs(n: int, seed: int) -> list[TtsSpec]:
    rng = np.random.default_rng([seed, 11])
    sentences = licence_sentences()
    return [
        TtsSpec(
            index=i,
            text=sentences[int(rng.integers(len(sentences)))],
            voice=PRETRAIN_VOICES[int(rng.integers(len(PRETRAIN_VOICES)))],
            params={k: round(float(rng.uniform(lo, hi)), 1) for k, (lo, hi) in PROSODY.items()},
            split="pretrain",
        )
        for i in range(n)
    ]


def build_pretrain_corpus(
    out_dir: str | os.PathLike[str],
    demo_noise_dirs: Iterable[Path],
    tts_utterances: int = 600,
    noise_minutes: float = 10.0,
    seed: int = 0,
    workers: int | None = None,
) -> PretrainCorpus:
    """Build (or reuse, when ``out_dir`` holds a complete build with the same parameters) the corpus.

    Writes ``speech/real/*.wav`` (the recordings, silence removed), ``speech/tts/*.wav``,
    ``speech/SOURCES.csv`` (file, kind, package or voice, source or sentence, licence) and
    ``noise/*.wav`` with its own ``SOURCES.csv``.
    """
    if set(PRETRAIN_VOICES) & set(VOICES):
        raise DemoCorpusError("a pre-training voice is one of the demo's voices")
    out_dir = Path(out_dir)
    real = real_speech_sources(demo_noise_dirs)
    params = {"version": FORMAT_VERSION, "tts": tts_utterances, "noise_minutes": noise_minutes, "seed": seed,
              "real": sorted(s.path for s in real)}  # fmt: skip
    marker = out_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params:
        return _corpus(out_dir, json.loads(marker.read_text())["summary"])
    marker.unlink(missing_ok=True)
    for folder in ("speech/real", "speech/tts", "noise"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
        for stale in (out_dir / folder).glob("*.wav"):
            stale.unlink()
    rows: list[tuple[str, str, str, str, str]] = []
    decode = Decoder()
    seconds_real = 0.0
    for i, src in enumerate(real):
        wave = decode(src.path)
        if wave.size < MIN_SECONDS * SAMPLE_RATE:
            continue
        name = f"real/{i:05d}.wav"
        sf.write(out_dir / "speech" / name, wave, SAMPLE_RATE, subtype="PCM_16")
        rows.append((name, "recorded", src.package, src.path, src.licence))
        seconds_real += wave.size / SAMPLE_RATE
    specs = _tts_specs(tts_utterances, seed)
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool, \
            tempfile.TemporaryDirectory(prefix="ctsl-tts-") as runtime:  # fmt: skip
        env = espeak_env(Path(runtime))
        for future in [pool.submit(synthesise, spec, out_dir / "speech" / "tts", env) for spec in specs]:
            future.result()
    for spec in specs:
        rows.append((f"tts/utt_{spec.index:05d}.wav", "tts", spec.voice, spec.text, "espeak-ng (GPL-3+), text: licence"))
    train = collect_noise_sources()["train"]
    english = {s.path for s in train["talkers_en"]}
    noise_sources = {"music": train["music"], "effects": train["effects"],
                     "talkers_en": [s for s in real if s.path in english],
                     "talkers_cs": [s for s in real if s.path not in english]}  # fmt: skip
    build_noise_split(out_dir / "noise", noise_sources, noise_minutes, np.random.default_rng([seed, 13]))
    with open(out_dir / "speech" / "SOURCES.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "kind", "package_or_voice", "source_or_text", "licence"])
        writer.writerows(rows)
    tts_seconds = sum(sf.info(out_dir / "speech" / r[0]).duration for r in rows if r[1] == "tts")
    summary = {"recorded_files": sum(r[1] == "recorded" for r in rows), "recorded_minutes": seconds_real / 60,
               "tts_files": len(specs), "tts_minutes": tts_seconds / 60, "noise_minutes": noise_minutes}  # fmt: skip
    marker.write_text(json.dumps({"params": params, "summary": summary}))
    log.info("pre-training corpus built in %s: %s", out_dir, summary)
    return _corpus(out_dir, summary)


def _corpus(out_dir: Path, summary: dict[str, float]) -> PretrainCorpus:
    speech = sorted((out_dir / "speech").glob("*/*.wav"))
    return PretrainCorpus(speech, out_dir / "noise", summary)
