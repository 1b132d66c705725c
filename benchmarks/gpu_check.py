"""The GPU check (issue 14): the paper-size model through the pipeline's own stages on one GPU.

Started by ``benchmarks/gpu_check.sh`` as one rank of a ``torchrun`` group. On an MSP-Podcast-like
corpus it writes here (speech-like WAV files of 2.75-11 s, babble noise), with ``model.backbone`` the
24-layer stand-in of wav2vec2-large-robust pruned to 12 layers, in bf16:

(a, b) the teacher stage and the ``RM+TL+CL`` student stage (embedding cache on) under DeepSpeed
       ZeRO-2 and under DDP: step time, utterances and audio seconds per second, peak GPU memory and
       MFU (FLOPs counted by torch on one batch, per padded audio second, times the padded audio
       seconds per second, over the GPU's dense bf16 peak); the figures of each stage's last epoch
       (the first one warms up);
(c)    the student with a live teacher on the GPU (cache off), under DeepSpeed;
(d)    the Ray trial's training function (:func:`ctsl_hpc.tune.trial.run_trial`) called directly, with
       the list of reported epochs in place of Ray's ``tune.report``;
(e)    the evaluation stage (teacher and student, ``eval.n_groups`` noisy copies): forward audio
       seconds per second, counted by :mod:`ctsl_hpc.cost`.

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``; with ``--results`` it appends the
table to that file (benchmarks/RESULTS.md). ``--cpu-smoke`` runs the same path on the CPU with the
demo's tiny backbone, a few 1 s utterances and fp32, so that the script cannot rot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ctsl_hpc.config import load_config
from ctsl_hpc.cost import stage_costs
from ctsl_hpc.data.corpus import SPLITS
from ctsl_hpc.experiment import Experiment, student_trainer, train_student, train_teacher
from ctsl_hpc.experiment.evaluation import evaluate
from ctsl_hpc.experiment.preparation import prepare
from ctsl_hpc.model import load_model, write_standin_backbone
from ctsl_hpc.run_records import DEV_SCORE
from ctsl_hpc.train.batches import make_loader, make_sampler
from ctsl_hpc.train.flops import counted_flops, mfu, peak_bf16_tflops
from ctsl_hpc.tune.trial import run_trial, shared_inputs
from ctsl_hpc.workdir import RunDir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speech_stand_in import SAMPLE_RATE, msp_like_seconds, speech_like, write_corpus  # noqa: E402

VARIANT = "RM+TL+CL"
SIZES = {"gpu": {"train": 384, "dev": 96, "test": 96}, "smoke": {"train": 8, "dev": 4, "test": 4}}


class Recorder:
    """A metrics sink keeping what the training loop logs per epoch."""

    def __init__(self) -> None:
        self.logged: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged[step] = dict(metrics)


def write_inputs(folder: Path, sizes: dict[str, int], max_seconds: float) -> list[str]:
    """A CSV corpus of MSP-like speech and a babble noise folder per split; returns the config overrides."""
    rng = np.random.default_rng(0)
    rows = ["path,arousal,dominance,valence,split"]
    for split in SPLITS:
        seconds = np.minimum(msp_like_seconds(sizes[split], rng, "lognormal"), max_seconds)
        for u in write_corpus(folder / "audio" / split, seconds, rng):
            rows.append(f"{u.path},{u.labels[0]:.3f},{u.labels[1]:.3f},{u.labels[2]:.3f},{split}")
        noise = folder / "noise" / split
        noise.mkdir(parents=True, exist_ok=True)
        for i in range(2):  # 40 s of four-talker babble per file
            sf.write(noise / f"babble{i}.wav", sum(speech_like(40 * SAMPLE_RATE, rng) for _ in range(4)), SAMPLE_RATE)
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return ["data.corpus=csv", f"data.manifest={folder / 'manifest.csv'}",
            *(f"noise.{split}={folder / 'noise' / split}" for split in SPLITS)]


def flops_per_padded_second(exp: Experiment, model_dir: Path, training: bool) -> float:
    """Counted FLOPs of one training step (or one forward) on a batch of the training set, per padded audio second."""
    model, _, _ = load_model(model_dir)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device).train(training)
    dataset = exp.data.clean("train")
    batch = next(iter(make_loader(dataset, make_sampler(dataset, exp.cfg.train, 0, 1), exp.cfg.train, device)))
    wave, mask = batch["clean"].to(device), batch["mask"].to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if not training:
                with torch.no_grad():
                    model(wave, mask)
                return
            out = model(wave, mask)
        (out.pred.float().sum() + out.embedding.float().pow(2).mean()).backward()

    flops = counted_flops(step)
    return flops / (mask.numel() / SAMPLE_RATE)


class Check:
    """The parts of the check and their figures."""

    def __init__(self, smoke: bool) -> None:
        self.smoke, self.rows = smoke, []
        self.cuda = torch.cuda.is_available() and not smoke
        self.device = torch.cuda.get_device_name() if self.cuda else "cpu"
        self.peak_tflops = peak_bf16_tflops(self.device)

    def start(self) -> float:
        """Empty the GPU's caches and its peak-memory counter; the start time."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return time.perf_counter()

    def row(self, part: str, engine: str, started: float, **figures: Any) -> dict[str, Any]:
        """Keep a part's figures with its wall time and peak GPU memory."""
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        row = {"part": part, "engine": engine, "wall_s": time.perf_counter() - started, "peak_gib": peak, **figures}
        self.rows.append(row)
        return row

    def training(self, part: str, engine: str, run: Callable[[Recorder], object]) -> dict[str, Any]:
        """Run a training stage (``run(sink)``) and keep its last epoch's figures (the first one warms up)."""
        sink, started = Recorder(), self.start()
        run(sink)
        last = sink.logged[max(sink.logged)]
        return self.row(part, engine, started, step_s=last["time/step_s"], audio_s_per_s=last["throughput/audio_s_per_s"],
                        padding_waste=last["data/padding_waste"])

    def add_mfu(self, row: dict[str, Any], flops_per_padded_s: float) -> None:
        """Achieved TFLOP/s (counted FLOPs per padded audio second x padded audio seconds per second) and MFU."""
        row["tflops"] = flops_per_padded_s * row["audio_s_per_s"] / (1.0 - row["padding_waste"]) / 1e12
        row["mfu"] = None if self.peak_tflops is None else mfu(row["tflops"] * 1e12, 1.0, self.peak_tflops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu-smoke", action="store_true", help="the CPU, the tiny backbone, a few 1 s utterances")
    parser.add_argument("--results", type=Path, help="add the table to this markdown file (benchmarks/RESULTS.md)")
    parser.add_argument("--work", type=Path, help="corpus, stand-in and work directories (default: <out>/work)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --cpu-smoke")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    check = Check(smoke)
    started = time.perf_counter()

    overrides = write_inputs(work / "inputs", SIZES["smoke" if smoke else "gpu"], 1.0 if smoke else 11.0)
    if smoke:
        overrides += ["model.backbone=tiny", "data.max_seconds=1.0", "train.batch_size=4", "eval.batch_size=4"]
    else:
        backbone = write_standin_backbone(work / "wav2vec2-large-robust")
        overrides += [f"model.backbone={backbone}", "train.precision=bf16", "train.batch_size=32", "eval.batch_size=32",
                      "train.num_workers=6", "data.max_seconds=12.0"]
    epochs = 1 if smoke else 2  # on the GPU the second epoch is timed (the first warms up)
    overrides += [f"train.epochs={epochs}", f"student.epochs={epochs}", f"student.variants=[{VARIANT}]", "eval.top_k=1", "eval.n_groups=2",
                  "tracking.enabled=false", "tune.max_t=1", f"tune.variant={VARIANT}", "tune.noise_minutes=[1.0]",
                  "train.deepspeed_config=zero2"]
    setup_s = time.perf_counter() - started

    for engine in ("deepspeed", "ddp"):
        cfg = load_config(None if smoke else "paper", [*overrides, f"train.engine={engine}", f"workdir={work / engine}"])
        exp = Experiment.open(cfg)
        prepare(exp)
        teacher = check.training("teacher", engine, lambda sink, e=exp: train_teacher(e, sink))
        student = check.training(f"student {VARIANT}, cache on", engine, lambda sink, e=exp: train_student(e, VARIANT, sink))
        teacher_dir = exp.workdir.teacher.summary().best_dir
        train_flops = flops_per_padded_second(exp, teacher_dir, training=True)
        check.add_mfu(teacher, train_flops)
        check.add_mfu(student, train_flops)
        if engine != "deepspeed":
            continue
        live = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, cache_teacher_embeddings=False))
        row = check.training(f"student {VARIANT}, live teacher (cache off)", engine,
                             lambda sink: student_trainer(Experiment(live, exp.workdir), VARIANT, RunDir(work / "live"), sink).fit())
        check.add_mfu(row, train_flops + flops_per_padded_second(exp, teacher_dir, training=False))

        n = {s: len(exp.data.splits[s]) for s in SPLITS}
        audio = {s: float(exp.data.clean(s).lengths.sum()) / SAMPLE_RATE for s in SPLITS}
        counted = stage_costs(cfg, n, audio)[-1]  # the evaluation stage's passes, as the dry run counts them
        eval_started = check.start()
        evaluate(exp, ["original", VARIANT])
        seconds = time.perf_counter() - eval_started
        check.row("evaluation (teacher + student, 2 noisy copies, Table 2)", "-", eval_started,
                  audio_s_per_s=sum(p.audio_s for p in counted.passes) / seconds)

        reported: list[dict[str, Any]] = []
        trial_started = check.start()
        run_trial({"lambda_tl": 30.0, "lambda_cl": 3.0, "noise_minutes": 1.0}, shared_inputs(exp), "gpu-check", reported.append)
        check.row(f"Ray trial function (run_trial without Ray: {len(reported)} epoch reported)", engine, trial_started,
                  dev_ccc_mean=reported[-1][DEV_SCORE])
    report(check, load_config(None if smoke else "paper", overrides), args, time.perf_counter() - started, setup_s)


def report(check: Check, cfg, args: argparse.Namespace, total_s: float, setup_s: float) -> None:
    """The figures as JSON and a markdown table (appended to ``--results`` when given)."""
    train = next(r for r in check.rows if r["part"] == "teacher" and r["engine"] == "deepspeed")
    evaluation = next(r for r in check.rows if r["part"].startswith("evaluation"))
    result = {
        "device": check.device, "smoke": check.smoke, "torch": torch.__version__, "peak_bf16_tflops": check.peak_tflops,
        "batch_size": cfg.train.batch_size, "max_seconds": cfg.data.max_seconds, "total_s": total_s, "setup_s": setup_s,
        "rows": check.rows,
        "imported": {name: name in sys.modules for name in ("ray", "mlflow", "ctsl_hpc.track", "submitit")},
        # the figures ctsl_hpc.cost.THROUGHPUT takes for (12, 1024, "bf16")
        "throughput_for_cost": {"train": train["audio_s_per_s"], "forward": evaluation["audio_s_per_s"]},
    }
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=float))

    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"## {when}, GPU check (`benchmarks/gpu_check.sh{' --cpu-smoke' if check.smoke else ''}`), {check.device}", "",
             f"torch {torch.__version__}, batch {cfg.train.batch_size}, crops <= {cfg.data.max_seconds:g} s, "
             f"{'fp32' if check.smoke else 'bf16'}; total {total_s:.0f} s (set-up {setup_s:.0f} s). Training rows: the "
             f"stage's last epoch (of {cfg.train.epochs}).", "",
             "| part | engine | s/step | audio s/s | utt/s | padding | peak GiB | TFLOP/s | MFU | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in check.rows:
        utt = None if "step_s" not in r else cfg.train.batch_size / r["step_s"]
        lines.append(f"| {r['part']} | {r['engine']} | {cell(r.get('step_s'), '.3f')} | {cell(r.get('audio_s_per_s'), '.0f')} | "
                     f"{cell(utt, '.1f')} | {cell(r.get('padding_waste'), '.1%')} | {cell(r.get('peak_gib'), '.1f')} | "
                     f"{cell(r.get('tflops'), '.1f')} | {cell(r.get('mfu'), '.1%')} | {r['wall_s']:.0f} |")
    lines += ["", f"For `ctsl_hpc.cost.THROUGHPUT[(12, 1024, 'bf16')]`: train {train['audio_s_per_s']:.0f}, forward "
              f"{evaluation['audio_s_per_s']:.0f} audio s per GPU-second.", ""]
    text = "\n".join(lines)
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    if args.results:  # newest first: before the first dated section
        old = args.results.read_text()
        at = old.find("\n## ") + 1 or len(old)
        args.results.write_text(old[:at] + text + "\n" + old[at:])


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
