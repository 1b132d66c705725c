"""Student-step throughput: the paper's naive loop against the package's student step (issue 8).

Both loops train the same model (the demo's tiny wav2vec2, or ``--gpu-large``: a 12-layer
large-robust-shaped one in bf16) as the ``RM+TL+CL`` student on the same noisy corpus with an
MSP-Podcast-like length mix (2.75 to 11 s, log-normal by default):

(a) naive, like the paper's code: random batches padded to the longest item, the frozen teacher run
    on the clean batch every step, plain (unfused) Adam;
(b) the package: ``ctsl_hpc.train.batches.make_sampler`` (length buckets), ``make_loader``, the engine of
    ``make_engine`` (mixed precision, fused optimiser where available), ``student_loss`` with
    ``cached_teacher`` over ``teacher_embeddings`` (built once before timing; its cost is printed).

Each loop runs ``--warmup`` untimed steps, then ``--reps`` timed windows of ``--steps`` steps each
(data loading included), the windows of the two loops alternating; the median window is reported, and
a whole epoch's throughput projected from the rate of padded audio (a few windows of length buckets
see a random mix of short and long buckets, which skews their samples/s). Also printed: the padding waste of each
sampler over a whole epoch, and the noise mixing + loading throughput (``UtteranceSet.__getitem__``
plus ``collate`` in a tight loop, one process, one thread) in audio seconds per wall second per core.

    python benchmarks/student_step.py            # CPU, tiny model, < 3 min on 2 cores
    python benchmarks/student_step.py --gpu-large  # a CUDA GPU: large-robust pruned to 12 layers, bf16, MFU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ctsl_hpc.config import ExperimentConfig, load_config
from ctsl_hpc.data.audio import WaveformStats
from ctsl_hpc.data.batching import RandomBatchSampler, UtteranceSet, collate, padding_waste
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.model import EmotionModel, build_model, large_robust_config, model_from_backbone_config, save_model
from ctsl_hpc.train.batches import make_loader, make_sampler
from ctsl_hpc.train.embed_cache import cached_teacher, live_teacher, teacher_embeddings
from ctsl_hpc.train.engines import OptimSettings, make_engine
from ctsl_hpc.train.flops import counted_flops, mfu, peak_bf16_tflops
from ctsl_hpc.train.objective import student_loss
from ctsl_hpc.train.recipe import Recipe, recipe
from speech_stand_in import MAX_SECONDS, SAMPLE_RATE, msp_like_seconds, speech_like, write_corpus

VARIANT = "RM+TL+CL"
DEMO_NOISE = Path("runs/demo/data/synthetic/noise/train")


@dataclass
class Throughput:
    samples_per_s: float
    audio_s_per_s: float  # real audio (no padding) per wall second
    padded_audio_s_per_s: float  # what the model computed on, padding included
    step_s: float
    windows: list[float]  # samples/s of each timed window
    epoch_samples_per_s: float = 0.0  # a whole epoch's utterances / its projected time (see `per_epoch`)
    epoch_audio_s_per_s: float = 0.0


@dataclass
class Loop:
    """One way of training: its step, an endless batch stream, and its sampler's padding waste."""

    step: Callable[[dict[str, torch.Tensor]], None]
    batches: Iterator[dict[str, torch.Tensor]]
    padding_waste: float
    sync: Callable[[], None]
    epoch_padded: float  # samples fed to the model in one epoch (padding included), mean of 3 epochs


def noise_pool(noise_dir: Path | None, rng: np.random.Generator) -> tuple[NoisePool, str]:
    """The demo's real Debian noise when built (or ``--noise-dir``), else babble-like arrays."""
    if noise_dir is not None and noise_dir.is_dir():
        return NoisePool.from_directory(noise_dir, SAMPLE_RATE, minutes=30.0, min_seconds=MAX_SECONDS), str(noise_dir)
    arrays = [sum(speech_like(60 * SAMPLE_RATE, rng) for _ in range(4)) for _ in range(3)]
    return NoisePool.from_arrays(arrays, SAMPLE_RATE), "synthetic babble arrays (no demo noise folder found)"


def _window(loop: Loop, steps: int) -> tuple[float, int, int, int]:
    n = audio = padded = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(loop.batches)
        loop.step(batch)
        n += batch["lengths"].numel()
        audio += int(batch["lengths"].sum())
        padded += batch["mask"].numel()
    loop.sync()
    return time.perf_counter() - start, n, audio, padded


def interleaved(loops: dict[str, Loop], warmup: int, steps: int, reps: int) -> dict[str, Throughput]:
    """Median throughput per loop over ``reps`` windows of ``steps`` steps, after ``warmup`` untimed steps.

    The loops' windows alternate, so a load change on a shared machine hits both alike.
    """
    for loop in loops.values():
        for _ in range(warmup):
            loop.step(next(loop.batches))
        loop.sync()
    runs: dict[str, list[tuple[float, int, int, int]]] = {name: [] for name in loops}
    for _ in range(reps):
        for name, loop in loops.items():
            runs[name].append(_window(loop, steps))
    out = {}
    for name, windows in runs.items():
        out[name] = Throughput(
            samples_per_s=statistics.median(n / t for t, n, _, _ in windows),
            audio_s_per_s=statistics.median(a / SAMPLE_RATE / t for t, _, a, _ in windows),
            padded_audio_s_per_s=statistics.median(p / SAMPLE_RATE / t for t, _, _, p in windows),
            step_s=statistics.median(t / steps for t, _, _, _ in windows),
            windows=[n / t for t, n, _, _ in windows],
        )
    return out


def epochs_of(loader, dataset: UtteranceSet, sampler) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of epoch 0, 1, ... without end (dataset and sampler re-set per epoch, as the trainer does)."""
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def naive_loop(student: EmotionModel, teacher: EmotionModel, dataset: UtteranceSet, rec: Recipe, batch_size: int,
               device: torch.device, amp: torch.dtype | None) -> Loop:
    """(a) The paper's step: random padded batches, a teacher forward on the clean audio every step."""
    sampler = RandomBatchSampler(dataset.lengths, batch_size, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    student.to(device).train()
    embed = live_teacher(teacher.to(device))
    optimizer = torch.optim.Adam(student.parameters(), lr=rec.lr)

    def step(batch: dict[str, torch.Tensor]) -> None:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = student(batch["noisy"], batch["mask"])
            terms = student_loss(out, batch, rec, embed)
        terms["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    waste = statistics.mean(epoch_waste(sampler, dataset.lengths, e) for e in range(3))
    return Loop(step, epochs_of(loader, dataset, sampler), waste, sync(device), epoch_padded(sampler, dataset.lengths))


def package_step(student: EmotionModel, table: torch.Tensor, dataset: UtteranceSet, rec: Recipe,
                 cfg: ExperimentConfig) -> Loop:
    """(b) The package's step: buckets, one persistent loader, the engine, cached teacher embeddings."""
    embed = cached_teacher(table)
    t = cfg.train
    settings = OptimSettings(rec.lr, rec.lr_decay, t.grad_accum, t.grad_clip, t.precision, t.fused_optimizer, t.batch_size)
    if t.compile:
        student.compile()
    engine = make_engine("plain", student, settings)
    sampler = make_sampler(dataset, t, 0, 1)
    loader = make_loader(dataset, sampler, t, engine.device)
    engine.module.train()

    def step(batch: dict[str, torch.Tensor]) -> None:
        batch = {k: v.to(engine.device, non_blocking=True) for k, v in batch.items()}
        with engine.autocast():
            out = engine.forward(batch["noisy"], batch["mask"])
        terms = student_loss(out, batch, rec, embed, engine.gather)
        engine.backward(terms["total"])
        engine.step()

    waste = statistics.mean(epoch_waste(sampler, dataset.lengths, e) for e in range(3))
    return Loop(step, epochs_of(loader, dataset, sampler), waste, sync(engine.device),
                epoch_padded(sampler, dataset.lengths))


def epoch_waste(sampler, lengths: np.ndarray, epoch: int) -> float:
    """Padding waste of the sampler's whole ``epoch`` (padded samples / samples fed to the model)."""
    sampler.set_epoch(epoch)
    return padding_waste(sampler.batches(), lengths)


def epoch_padded(sampler, lengths: np.ndarray) -> float:
    """Samples one epoch feeds the model (each batch padded to its longest), mean over epochs 0-2."""
    total = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        total.append(sum(len(b) * int(lengths[b].max()) for b in map(np.asarray, sampler.batches())))
    return statistics.mean(total)


def per_epoch(measured: Throughput, loop: Loop, lengths: np.ndarray) -> Throughput:
    """Project the windows onto a whole epoch: epoch time = the epoch's padded samples / the padded rate.

    A few windows of length buckets see a random mix of short and long buckets, which skews samples/s;
    the rate of padded audio per second does not depend on that mix (the step cost is linear in it).
    """
    epoch_s = loop.epoch_padded / SAMPLE_RATE / measured.padded_audio_s_per_s
    return dataclasses.replace(
        measured, epoch_samples_per_s=len(lengths) / epoch_s, epoch_audio_s_per_s=lengths.sum() / SAMPLE_RATE / epoch_s
    )


def corpus_scale_waste(cfg: ExperimentConfig, dist: str, n: int = 50_000) -> float:
    """The package sampler's waste on an MSP-Podcast-sized list of lengths from the same distribution."""
    lengths = (msp_like_seconds(n, np.random.default_rng(1), dist) * SAMPLE_RATE).astype(np.int64)
    sampler = make_sampler(SimpleNamespace(lengths=lengths, sample_rate=SAMPLE_RATE), cfg.train, 0, 1)
    return epoch_waste(sampler, lengths, 0)


def mixing_throughput(dataset: UtteranceSet, seconds: float, batch_size: int) -> float:
    """Audio seconds of noisy items (read or preloaded, mixed, normalised, collated) per wall second, 1 core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    audio, start, i, epoch = 0, time.perf_counter(), 0, 0
    order = np.random.default_rng(0).permutation(len(dataset))
    while time.perf_counter() - start < seconds:
        items = []
        for _ in range(batch_size):
            if i == len(order):
                i, epoch = 0, epoch + 1
                dataset.set_epoch(epoch)
            items.append(dataset[int(order[i])])
            i += 1
        audio += int(collate(items)["lengths"].sum())
    elapsed = time.perf_counter() - start
    torch.set_num_threads(threads)
    return audio / SAMPLE_RATE / elapsed


def cfg_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def make_model(cfg: ExperimentConfig, large: bool) -> EmotionModel:
    """The demo's tiny model, or a randomly initialised wav2vec2-large-robust pruned to 12 layers."""
    torch.manual_seed(0)
    return model_from_backbone_config(large_robust_config(12), cfg.model) if large else build_model(cfg.model)


def train_step_flops(model: EmotionModel, batch: dict[str, torch.Tensor], device: torch.device) -> int:
    """Counted FLOPs of one forward + backward of ``model`` on ``batch`` (bf16 autocast on GPUs)."""
    model.to(device).train()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(batch["noisy"].to(device), batch["mask"].to(device))
        (out.pred.float().sum() + out.embedding.float().pow(2).mean()).backward()

    flops = counted_flops(step)
    model.zero_grad(set_to_none=True)
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=384)
    parser.add_argument("--lengths", choices=("lognormal", "uniform"), default="lognormal")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each loop")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed window")
    parser.add_argument("--reps", type=int, default=3, help="timed windows per loop (the median is reported)")
    parser.add_argument("--mix-seconds", type=float, default=3.0)
    parser.add_argument("--noise-dir", type=Path, default=DEMO_NOISE)
    parser.add_argument("--gpu-large", action="store_true", help="12-layer large-robust shape in bf16 on a GPU; MFU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the demo config's train.batch_size")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (train.* keys shape (b) only), e.g. train.max_batch_seconds=100; repeatable")
    args = parser.parse_args()
    if args.gpu_large and not torch.cuda.is_available():
        parser.error("--gpu-large needs a CUDA GPU")

    overrides = [f"data.max_seconds={MAX_SECONDS}"]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.gpu_large:  # the paper's head and frozen CNN
        overrides += ["model.head_hidden=1024", "model.freeze_feature_encoder=true", "model.dropout=0.5"]
    cfg = load_config(None, [*overrides, *args.set])
    rec = recipe(VARIANT, cfg)
    rng = np.random.default_rng(0)
    device = cfg_device()
    amp = torch.bfloat16 if device.type == "cuda" else None  # the same precision in both loops
    with tempfile.TemporaryDirectory(prefix="student-step-") as tmp:
        tmp_dir = Path(tmp)
        seconds = msp_like_seconds(args.utterances, rng, args.lengths)
        utts = write_corpus(tmp_dir / "audio", seconds, rng)
        pool, pool_source = noise_pool(args.noise_dir, rng)
        stats = WaveformStats(0.0, 0.05)

        def dataset(noisy: bool, preload: bool = True) -> UtteranceSet:
            noise = {"noise": pool, "snr_db": cfg.student.snr_db} if noisy else {}
            return UtteranceSet(utts, SAMPLE_RATE, MAX_SECONDS, stats=stats, preload=preload, seed=cfg.seed, **noise)

        train_set, clean_set = dataset(True), dataset(False)
        teacher = make_model(cfg, args.gpu_large)
        teacher_dir = save_model(teacher, tmp_dir / "teacher", stats)
        students = [make_model(cfg, args.gpu_large) for _ in range(2)]
        for student in students:  # both start from the teacher, as students do
            student.load_state_dict(teacher.state_dict())

        start = time.perf_counter()
        table = teacher_embeddings(teacher.to(device), teacher_dir, clean_set, tmp_dir / "cache", cfg.eval.batch_size)
        cache_s = time.perf_counter() - start
        loops = {
            "naive": naive_loop(students[0], teacher, train_set, rec, cfg.train.batch_size, device, amp),
            "package": package_step(students[1], table, train_set, rec, cfg),
        }
        measured = interleaved(loops, args.warmup, args.steps, args.reps)
        naive, package = (per_epoch(measured[k], loops[k], train_set.lengths) for k in ("naive", "package"))
        result = {
            "model": "12-layer large-robust shape, bf16" if args.gpu_large else "demo tiny wav2vec2",
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads(),
            "batch_size": cfg.train.batch_size,
            "utterances": args.utterances,
            "lengths": f"{args.lengths}, {seconds.min():.2f}-{seconds.max():.2f} s, mean {seconds.mean():.2f} s",
            "noise": pool_source,
            "naive": dataclasses.asdict(naive),
            "package": dataclasses.asdict(package),
            "ratio": package.epoch_samples_per_s / naive.epoch_samples_per_s,
            "ratio_of_window_medians": package.samples_per_s / naive.samples_per_s,
            "padding_waste_naive": loops["naive"].padding_waste,
            "padding_waste_package": loops["package"].padding_waste,
            "padding_waste_package_50k": corpus_scale_waste(cfg, args.lengths),
            "teacher_cache_build_s": cache_s,
            "mixing_x_realtime_per_core_preloaded": mixing_throughput(train_set, args.mix_seconds, cfg.train.batch_size),
            "mixing_x_realtime_per_core_from_disk": mixing_throughput(
                dataset(True, preload=False), args.mix_seconds, cfg.train.batch_size
            ),
        }
        if args.gpu_large:
            result.update(gpu_utilisation(students[1], next(loops["package"].batches), package, device))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


def gpu_utilisation(model: EmotionModel, batch: dict[str, torch.Tensor], measured: Throughput,
                    device: torch.device) -> dict[str, float | None]:
    """Model FLOPs utilisation: counted FLOPs per padded audio second x padded audio seconds per second / peak."""
    flops = train_step_flops(model, batch, device)
    per_padded_s = flops / (batch["mask"].numel() / SAMPLE_RATE)
    achieved = per_padded_s * measured.padded_audio_s_per_s
    peak = peak_bf16_tflops(torch.cuda.get_device_name())
    return {
        "train_flops_per_padded_audio_s": per_padded_s,
        "achieved_tflops": achieved / 1e12,
        "peak_bf16_tflops": peak,
        "mfu": None if peak is None else mfu(achieved, 1.0, peak),
    }


def report(r: dict) -> None:
    print(f"model: {r['model']} on {r['device']} ({r['torch_threads']} threads), batch {r['batch_size']}, "
          f"{r['utterances']} utterances ({r['lengths']}), noise: {r['noise']}")
    print("per epoch (projected from the padded-audio rate)  | timed windows (median)")
    for key, label in (("naive", "(a) naive (paper)"), ("package", "(b) package")):
        t = r[key]
        print(f"{label:18s} {t['epoch_samples_per_s']:7.2f} samples/s {t['epoch_audio_s_per_s']:7.2f} audio s/s  | "
              f"{t['samples_per_s']:6.2f} samples/s {t['audio_s_per_s']:6.2f} audio s/s "
              f"{t['padded_audio_s_per_s']:6.2f} padded s/s {t['step_s']:6.2f} s/step  "
              f"padding waste {r['padding_waste_' + key]:5.1%}")
    print(f"RATIO (b)/(a): {r['ratio']:.2f}x per epoch  ({r['ratio_of_window_medians']:.2f}x of the window medians; "
          f"teacher cache built once in {r['teacher_cache_build_s']:.1f} s)")
    print(f"padding waste of (b)'s sampler on a 50k-utterance corpus of the same mix: {r['padding_waste_package_50k']:.1%}")
    print(f"noise mixing + loading: {r['mixing_x_realtime_per_core_preloaded']:.0f}x real time per core (preloaded), "
          f"{r['mixing_x_realtime_per_core_from_disk']:.0f}x (read from disk)")
    if "mfu" in r:
        mfu = "n/a (unknown GPU peak)" if r["mfu"] is None else f"{r['mfu']:.1%}"
        print(f"achieved {r['achieved_tflops']:.1f} TFLOP/s of {r['peak_bf16_tflops']} peak bf16: MFU {mfu}")


if __name__ == "__main__":
    main()
