"""The corpora ``data.corpus`` may name: one registered loader each.

A loader turns the experiment config into utterances per split (``train``, ``dev``, ``test``) and,
for a corpus that brings its own noise (the demo), the noise folder of each split. The config
takes its allowed names and required keys from here, so a new corpus is one loader function and
one :func:`register` call. Loaders import what they need when called: reading the registry stays
cheap (the config is validated on login nodes).

Example:
    >>> corpus_spec("msp_podcast").required
    ('root',)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctsl_hpc.data.corpus import Utterance, load_csv_manifest, load_msp_podcast


@dataclass(frozen=True)
class Corpus:
    """What a loader returns: utterances per split and, if the corpus has them, its noise folders."""

    splits: dict[str, list[Utterance]]
    noise_dirs: dict[str, Path] | None = None  # None: the config's noise.train/dev/test


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus kind: its loader, the ``data.*`` keys it needs, whether it brings its own noise."""

    name: str
    load: Callable[[Any, Path], Corpus]  # (experiment config, a folder for what it builds) -> Corpus
    required: tuple[str, ...] = ()
    own_noise: bool = False
    built: Callable[[Any, Path], Corpus | None] | None = None  # what is there, building nothing (None: ``load``)

    def existing(self, cfg: Any, build_dir: Path) -> Corpus | None:
        """The corpus as it stands, with nothing built or written (None: it is built by the first run)."""
        return (self.built or self.load)(cfg, build_dir)


def _load_csv(cfg: Any, _build_dir: Path) -> Corpus:
    return Corpus(load_csv_manifest(cfg.data.manifest))


def _load_msp_podcast(cfg: Any, _build_dir: Path) -> Corpus:
    return Corpus(load_msp_podcast(cfg.data.root, cfg.data.msp_test_split))


def _load_synthetic(cfg: Any, build_dir: Path) -> Corpus:
    from ctsl_hpc.data.synthetic import build_demo_corpus

    return _demo(build_demo_corpus(build_dir, cfg.synthetic))


def _demo(demo: Any) -> Corpus:
    """A built demo corpus (``ctsl_hpc.data.synthetic.DemoCorpus``) with its own noise folders."""
    noise = {"train": demo.noise_train, "dev": demo.noise_dev, "test": demo.noise_test}
    return Corpus(load_csv_manifest(demo.manifest), noise)


def _built_synthetic(_cfg: Any, build_dir: Path) -> Corpus | None:
    from ctsl_hpc.data.synthetic import built_demo_corpus

    demo = built_demo_corpus(build_dir)
    return None if demo is None else _demo(demo)


_REGISTRY: dict[str, CorpusSpec] = {}


def register(spec: CorpusSpec) -> CorpusSpec:
    """Make ``spec.name`` a valid ``data.corpus``."""
    _REGISTRY[spec.name] = spec
    return spec


def corpus_spec(name: str) -> CorpusSpec:
    """The registered corpus ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"data.corpus: {name!r} is not one of {corpus_names()}") from None


def corpus_names() -> list[str]:
    """Every registered corpus name."""
    return list(_REGISTRY)


register(CorpusSpec("synthetic", _load_synthetic, own_noise=True, built=_built_synthetic))
register(CorpusSpec("msp_podcast", _load_msp_podcast, required=("root",)))
register(CorpusSpec("csv", _load_csv, required=("manifest",)))
