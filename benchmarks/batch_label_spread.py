"""How much of the label spread a batch keeps: length buckets against random batches, on a corpus's training split.

The CCC loss and the InfoNCE negatives are computed within a batch, so batches that hold a narrow
range of labels change the objective. On the demo corpus the crop length correlates with arousal
(the TTS speaking rate drives both), so length buckets gather utterances of similar arousal. This
prints, for each attribute, the mean within-batch standard deviation of the labels (1..7 scale) over
``--epochs`` epochs of the training split, with ``train.bucket_by_length`` on and off, and their
ratio; the demo keeps buckets only when every ratio is within 5 % of 1 (its config says which).

    python benchmarks/batch_label_spread.py [--workdir runs/demo] [key=value ...]
"""

from __future__ import annotations

import argparse

import numpy as np

from ctsl_hpc.config import load_config
from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.experiment import Experiment
from ctsl_hpc.train.batches import make_sampler

TOLERANCE = 0.05


def within_batch_spread(labels: np.ndarray, sampler, epochs: int) -> np.ndarray:
    """Mean over the batches of ``epochs`` epochs of each attribute's standard deviation within a batch."""
    spreads = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        spreads += [labels[batch].std(axis=0) for batch in sampler.batches() if len(batch) > 1]
    return np.mean(spreads, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/label-spread")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(None, [f"workdir={args.workdir}", "tracking.enabled=false", *args.overrides])
    exp = Experiment.open(cfg)
    train = exp.data.clean("train")
    labels = np.asarray([u.labels for u in train.utterances])  # the 1..7 scale
    lengths = train.lengths / train.sample_rate
    print(f"{len(labels)} training utterances; Pearson r of crop length with " + ", ".join(
        f"{a} {np.corrcoef(lengths, labels[:, k])[0, 1]:+.2f}" for k, a in enumerate(ATTRIBUTES)))
    spread = {}
    for buckets in (True, False):
        train_cfg = type(cfg.train)(**{**cfg.train.__dict__, "bucket_by_length": buckets})
        spread[buckets] = within_batch_spread(labels, make_sampler(train, train_cfg, 0, 1), args.epochs)
    ratio = spread[True] / spread[False]
    print("| batches | " + " | ".join(f"{a} within-batch std" for a in ATTRIBUTES) + " |")
    print("|---|" + "---:|" * len(ATTRIBUTES))
    print("| random | " + " | ".join(f"{v:.3f}" for v in spread[False]) + " |")
    print("| length buckets | " + " | ".join(f"{v:.3f} ({r:.2f}x)" for v, r in zip(spread[True], ratio, strict=True))
          + " |")
    keep = bool(np.all(np.abs(ratio - 1) <= TOLERANCE))
    print(f"length buckets keep the label spread within {TOLERANCE:.0%}: {'yes' if keep else 'no'}")


if __name__ == "__main__":
    main()
