"""The inputs of an experiment: the corpus, its waveform statistics, the noise pools and the datasets.

Every file is checked once, by the prepare stage (:mod:`ctsl_hpc.experiment.preparation`); what it
found is read back here from the work directory (the verdicts cache, the statistics, the
fingerprint), so the training and evaluation jobs decode nothing to check it again. Run without a
prepare stage (a test, a stage called directly), the same check runs here on first use.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ctsl_hpc.atomic_io import RecordError, atomic_write_json, atomic_write_text
from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.data.audio import AudioError, WaveformStats, merge_moments
from ctsl_hpc.data.audit import AudioVerdict, Reading, audit, fingerprint
from ctsl_hpc.data.conditions import SNR_OF
from ctsl_hpc.data.corpora import corpus_spec
from ctsl_hpc.data.corpus import SPLITS, CorpusError, Utterance
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.data.packed import PackedCorpus
from ctsl_hpc.workdir import Workdir

if TYPE_CHECKING:  # the sets import torch: the prepare job, which builds none, runs without it
    from ctsl_hpc.data.batching import UtteranceSet

log = logging.getLogger(__name__)


class Data:
    """The corpus, waveform statistics, noise pools and datasets of an experiment (built lazily)."""

    def __init__(self, cfg: ExperimentConfig, workdir: Workdir):
        self.cfg, self.workdir = cfg, workdir
        self.corpus = corpus_spec(cfg.data.corpus).load(cfg, workdir.synthetic_data)
        noise = cfg.noise
        self.noise_dirs = self.corpus.noise_dirs or {"train": noise.train, "dev": noise.dev, "test": noise.test}
        self._pools: dict[str, NoisePool] = {}
        self.store: PackedCorpus | None = None  # the staged packed corpus, where a job reads from one

    @property
    def reading(self) -> Reading:
        """How training reads an utterance (the crop, the sample rate, the shortest usable length)."""
        d = self.cfg.data
        return Reading(d.sample_rate, d.max_seconds, d.min_seconds)

    def everything(self) -> list[Utterance]:
        """Every listed utterance of every split, in split order."""
        return [u for split in SPLITS for u in self.corpus.splits[split]]

    @cached_property
    def verdicts(self) -> dict[str, AudioVerdict]:
        """Every file of every split as training reads it: the prepare stage's verdicts (checked here only
        where it has not run, or a file changed since)."""
        return audit([u.path for u in self.everything()], self.reading, self.workdir.verdicts())

    @cached_property
    def splits(self) -> dict[str, list[Utterance]]:
        """The usable utterances per split. A bad file stops the run naming it, or, with
        ``data.on_bad_audio=skip``, is left out and counted; an empty split is refused."""
        policy = self.cfg.data.on_bad_audio
        usable: dict[str, list[Utterance]] = {}
        for split in SPLITS:
            utterances = self.corpus.splits[split]
            bad = [self.verdicts[str(u.path)].problem for u in utterances if self.verdicts[str(u.path)].problem]
            if bad and policy == "error":
                raise AudioError(f"{bad[0]} (the {split} split has {len(bad)} unusable file(s); "
                                 "data.on_bad_audio=skip leaves them out)")
            if bad:
                log.warning("the %s split: %d of %d utterance(s) left out for unusable audio (first: %s)",
                            split, len(bad), len(utterances), bad[0])
            usable[split] = [u for u in utterances if not self.verdicts[str(u.path)].problem]
            if not usable[split]:
                raise CorpusError(f"data.corpus {self.cfg.data.corpus!r}: the {split} split has no usable utterance "
                                  f"({len(utterances)} listed)")
        return usable

    @cached_property
    def fingerprint(self) -> str:
        """The corpus's content hash (splits, labels, audio bytes), also saved in the work directory."""
        value = fingerprint(self.splits, self.verdicts)
        self.workdir.fingerprint.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.workdir.fingerprint, {"fingerprint": value, **{s: len(u) for s, u in self.splits.items()}})
        return value

    @cached_property
    def stats(self) -> WaveformStats | None:
        """Mean/std of the training waveforms (from the checked files' moments, saved in the work directory)."""
        if not self.cfg.data.normalize:
            return None
        path = self.workdir.waveform_stats
        if path.is_file():
            try:
                return WaveformStats.load(path)
            except ValueError as exc:
                raise RecordError(f"{exc}: delete it, it is computed again from the training set") from None
        stats = merge_moments(self.verdicts[str(u.path)].moments for u in self.splits["train"])
        atomic_write_text(path, stats.to_json())
        return stats

    def _set(
        self, utterances: list[Utterance], stats: WaveformStats | None, noise: NoisePool | None = None,
        snr: float | None = None,
    ) -> UtteranceSet:
        from ctsl_hpc.data.batching import UtteranceSet

        d = self.cfg.data
        return UtteranceSet(
            utterances,
            sample_rate=d.sample_rate,
            max_seconds=d.max_seconds,
            min_seconds=d.min_seconds,
            stats=stats,
            preload=d.preload,
            noise=noise,
            snr_db=snr,
            snr_mode=self.cfg.noise.snr_mode,
            seed=self.cfg.seed,
            on_bad_audio=d.on_bad_audio,
            store=self.store,
        )

    def pool(self, split: str) -> NoisePool:
        """The noise pool of ``split`` (read once, capped to ``noise.minutes``)."""
        if split not in self._pools:
            d = self.cfg.data
            self._pools[split] = NoisePool.from_directory(
                self.noise_dirs[split], d.sample_rate, self.cfg.noise.minutes, min_seconds=d.max_seconds
            )
        return self._pools[split]

    def set_pool(self, split: str, pool: NoisePool) -> None:
        """Use ``pool`` for ``split`` instead of reading the folder (a pool shared by tuning trials)."""
        self._pools[split] = pool

    def clean(self, split: str) -> UtteranceSet:
        return self._set(self.splits[split], self.stats)

    def noisy(self, split: str, snr_db: float) -> UtteranceSet:
        """``split`` mixed with its own noise pool at ``snr_db`` (re-drawn per epoch for train), or the corpus's own
        noisy recordings of it at that SNR where the config names them (:meth:`recorded`)."""
        recorded = {SNR_OF[c]: s for c, s in self.recorded(split).items()}
        if snr_db in recorded:
            return recorded[snr_db]
        return self._set(self.splits[split], self.stats, self.pool(split), snr_db)

    def recorded(self, split: str) -> dict[str, UtteranceSet]:
        """The corpus's own noisy recordings of ``split`` per condition: ``eval.noisy_roots`` for the test set,
        ``eval.noisy_dev_roots`` for the development set (a file of the same name per utterance, checked before
        the queue by :mod:`ctsl_hpc.preflight`)."""
        from ctsl_hpc.data.batching import UtteranceSet

        roots = {"test": self.cfg.eval.noisy_roots, "dev": self.cfg.eval.noisy_dev_roots}.get(split, {})
        sets = {}
        for condition, folder in roots.items():
            utterances = [Utterance(Path(folder) / u.path.name, u.labels, u.split, u.speaker) for u in self.splits[split]]
            missing = next((u.path for u in utterances if not u.path.is_file()), None)
            if missing is not None:
                key = "eval.noisy_roots" if split == "test" else "eval.noisy_dev_roots"
                raise FileNotFoundError(f"{key}.{condition}: {missing} does not exist")
            d = self.cfg.data
            sets[condition] = UtteranceSet(utterances, d.sample_rate, d.max_seconds, d.min_seconds, self.stats, d.preload)
        return sets
