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

import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..atomic_io import atomic_write_csv, atomic_write_text
from .audio import resample
from .corpus import SPLITS
from .demo_sources import APT_HINT, SAMPLE_RATE, DemoCorpusError, build_noise_split, collect_noise_sources

log = logging.getLogger(__name__)

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

@dataclass(frozen=True)
class DemoCorpus:
    """Where the built demo lives: a CSV manifest and one noise folder per split."""

    manifest: Path
    noise_train: Path
    noise_dev: Path
    noise_test: Path


@dataclass(frozen=True)
class TtsSpec:
    """One utterance to synthesise: its number, sentence, voice, prosody parameters and split."""

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
    params = _build_params(cfg, n_utterances, seed, max_voices, noise_minutes)
    n_utterances, seed, max_voices = params["n_utterances"], params["seed"], params["max_voices"]
    out_dir = Path(out_dir)
    result = DemoCorpus(out_dir / "manifest.csv", *(out_dir / "noise" / s for s in SPLITS))
    marker = out_dir / MARKER
    if _built_with(marker) == params:
        return result
    _check_tools()
    marker.unlink(missing_ok=True)
    for stale in (out_dir / "audio", out_dir / "noise"):
        shutil.rmtree(stale, ignore_errors=True)
    (out_dir / "audio").mkdir(parents=True)
    specs = _draw_specs(n_utterances, seed, max_voices)
    sources = collect_noise_sources()  # fails fast, before any TTS, when a noise package is missing
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, tempfile.TemporaryDirectory(prefix="ctsl-tts-") as runtime:
        env = espeak_env(Path(runtime))
        futures = [pool.submit(synthesise, spec, out_dir / "audio", env) for spec in specs]
        folders = (result.noise_train, result.noise_dev, result.noise_test)
        for i, (split, minutes, folder) in enumerate(zip(SPLITS, noise_minutes, folders, strict=True)):
            build_noise_split(folder, sources[split], minutes, np.random.default_rng([seed, 7, i]))
        for future in futures:
            future.result()
    _write_manifest(result.manifest, specs)
    atomic_write_text(marker, json.dumps(params))
    log.info("demo corpus built in %s (%d utterances)", out_dir, n_utterances)
    return result


def built_demo_corpus(out_dir: str | os.PathLike[str]) -> DemoCorpus | None:
    """The demo corpus a finished build left in ``out_dir`` (a work directory's holds its config's), else None.

    Builds and writes nothing (``sweep --dry-run`` counts the corpus with it)."""
    out_dir = Path(out_dir)
    if _built_with(out_dir / MARKER) is None:
        return None
    return DemoCorpus(out_dir / "manifest.csv", *(out_dir / "noise" / s for s in SPLITS))


def _build_params(
    cfg: Any, n_utterances: int, seed: int, max_voices: int, noise_minutes: tuple[float, float, float]
) -> dict[str, Any]:
    """What a build is made of (recorded in its marker): the keyword values, overridden by ``cfg``'s."""
    if cfg is not None:
        n_utterances = int(getattr(cfg, "utterances", n_utterances))
        seed = int(getattr(cfg, "seed", seed))
        max_voices = int(getattr(cfg, "max_voices", max_voices))
    if n_utterances < 3:
        raise ValueError(f"synthetic.utterances must be >= 3, got {n_utterances}")
    if not 1 <= max_voices <= len(VOICES):
        raise ValueError(f"synthetic.max_voices must be in 1..{len(VOICES)}, got {max_voices}")
    return {"version": FORMAT_VERSION, "n_utterances": n_utterances, "seed": seed, "max_voices": max_voices,
            "noise_minutes": list(noise_minutes)}


def _check_tools() -> None:
    if shutil.which("espeak-ng") is None:
        raise DemoCorpusError(f"espeak-ng is not installed; run: {APT_HINT}")
    if shutil.which("dpkg-query") is None:
        raise DemoCorpusError("the demo noise is built from Debian packages, but dpkg-query is missing (not Debian?)")


def _draw_specs(n: int, seed: int, max_voices: int) -> list[TtsSpec]:
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
        TtsSpec(
            index=i,
            text=SENTENCES[text_idx[i]],
            voice=voices[voice_idx[i]],
            params={k: round(float(v[i]), 1) for k, v in values.items()},
            split=str(split_of[i]),
        )
        for i in range(n)
    ]


def espeak_env(runtime: Path) -> dict[str, str]:
    """espeak-ng's environment, with PulseAudio's runtime folder pinned to ``runtime``.

    espeak-ng starts a PulseAudio client even with ``--stdout``. Without a runtime folder of its own,
    the client's first start on a machine (no ``~/.config/pulse`` yet: right after install, in CI)
    creates one with a random name and seeds libc's ``rand()`` on the way; espeak-ng draws its
    fricative noise from ``rand()``, so that one utterance came out different from every later call
    (measured: same length, max difference 0.025). A given folder needs no random name: every call
    is byte-identical.
    """
    return {**os.environ, "PULSE_RUNTIME_PATH": str(runtime / "pulse")}


def synthesise(spec: TtsSpec, audio_dir: Path, env: dict[str, str]) -> None:
    p = spec.params
    ssml = f'<speak><prosody range="{p["range"]:.0f}%">{spec.text}</prosody></speak>'
    cmd = ["espeak-ng", "--stdout", "-m", "-v", spec.voice, "-s", f"{p['rate']:.0f}", "-p", f"{p['pitch']:.0f}",
           "-a", f"{p['amplitude']:.0f}", "-g", f"{p['gap']:.0f}", ssml]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, check=False, env=env)
    if proc.returncode != 0 or not proc.stdout:
        raise DemoCorpusError(f"espeak-ng failed for utterance {spec.index}: {proc.stderr.decode(errors='replace')}")
    wave, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    wave = np.clip(resample(wave, rate, SAMPLE_RATE), -1.0, 1.0)
    sf.write(audio_dir / f"utt_{spec.index:05d}.wav", wave, SAMPLE_RATE, subtype="PCM_16")


def _write_manifest(path: Path, specs: list[TtsSpec]) -> None:
    """Write the manifest, and next to it `prosody.csv` with each utterance's text, voice and TTS parameters."""
    audio = [f"audio/utt_{spec.index:05d}.wav" for spec in specs]
    atomic_write_csv(path.parent / "prosody.csv", ["path", "text", "voice", *PROSODY],
                     ([a, s.text, s.voice, *(s.params[k] for k in PROSODY)] for a, s in zip(audio, specs)))
    atomic_write_csv(path, ["path", "arousal", "dominance", "valence", "split", "speaker"],
                     ([a, *(f"{y:.4f}" for y in s.labels()), s.split, s.voice] for a, s in zip(audio, specs)))


def _built_with(marker: Path) -> dict[str, Any] | None:
    """The parameters a finished build recorded (None: no build, or one cut short)."""
    try:
        return json.loads(marker.read_text()) if marker.is_file() else None
    except json.JSONDecodeError:
        return None
