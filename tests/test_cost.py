"""What a sweep costs before it runs (``sweep --dry-run``): counts from the audio headers, GPU-hours, no writes."""

from __future__ import annotations

import functools
import json
import sys

import numpy as np
import pytest

from ctsl_hpc.config import load_config
from ctsl_hpc.cost import sweep_cost, throughput
from ctsl_hpc.data.audio import read_audio
from ctsl_hpc.data.corpus import load_csv_manifest
from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.workdir import Workdir

RATES = ["cost.train_audio_s_per_gpu_s=50", "cost.forward_audio_s_per_gpu_s=200"]


@pytest.fixture
def overrides(tiny_overrides, tmp_path):
    return [*tiny_overrides(tmp_path / "work"), *RATES, "train.epochs=3", "student.epochs=2", "student.variants=[RH,RM+TL]"]


def test_the_dry_run_counts_the_corpus_from_its_headers_and_writes_nothing(overrides, small_corpus, tmp_path, capsys):
    assert main(["sweep", "--dry-run", *overrides]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "work").exists()
    assert "not cached: the work directory does not exist yet" in out
    splits = load_csv_manifest(small_corpus.manifest)
    assert f"train {len(splits['train'])} utterances" in out and "cost of the whole sweep:" in out
    for stage in ("teacher", "students", "eval"):
        assert out.index(f"{stage}: submit") < out.index("GPU-hours", out.index(f"{stage}: submit"))


def test_counts_and_gpu_hours_follow_the_stages(overrides, small_corpus, tmp_path):
    cfg = load_config(None, overrides)
    n, audio, stages = sweep_cost(cfg, Workdir(tmp_path / "work"))
    splits = load_csv_manifest(small_corpus.manifest)
    decoded = {s: sum(min(len(read_audio(u.path, 16000)) / 16000, cfg.data.max_seconds) for u in splits[s]) for s in splits}
    assert n == {s: len(u) for s, u in splits.items()}
    assert audio == pytest.approx(decoded, rel=1e-9)  # the headers say what decoding finds
    teacher, students, evaluation = stages
    rate = throughput(cfg)
    assert (rate.train, rate.forward) == (50.0, 200.0)
    assert teacher.gpu_seconds(rate) == pytest.approx(3 * audio["train"] / 50 + 3 * audio["dev"] / 200)
    # RH trains only its head (forward passes); RM+TL needs the teacher's embeddings, computed once (the cache)
    kinds = {p.what: (p.passes, p.training) for p in students.passes}
    assert kinds["teacher embeddings of train, once (cache)"] == (n["train"], False)
    assert kinds["RH: 2 epochs x train (forward: head only)"] == (2 * n["train"], False)
    assert kinds["RM+TL: 2 epochs x train"] == (2 * n["train"], True)
    # 3 models x 1 checkpoint (eval.top_k=1) x 4 conditions, one pass each (eval.groups: splits, the demo's),
    # and Table 2: 3 models x 4 conditions + 1
    assert cfg.eval.groups == "splits" and [p.passes for p in evaluation.passes] == [3 * 4 * n["test"], 13 * n["dev"]]
    cfg.eval.groups = "copies"  # clean once, each SNR once per copy (eval.n_groups=2)
    copies = sweep_cost(cfg, Workdir(tmp_path / "work"))[2][2]
    assert [p.passes for p in copies.passes] == [3 * (1 + 3 * 2) * n["test"], 13 * n["dev"]]
    cfg.student.cache_teacher_embeddings = False
    kinds = {p.what: p.passes for p in sweep_cost(cfg, Workdir(tmp_path / "work"))[2][1].passes}
    assert "teacher embeddings of train, once (cache)" not in kinds and kinds["RM+TL: live teacher, 2 epochs x train"] == 2 * n["train"]


def test_durations_are_cached_in_an_existing_work_directory_and_reread_when_a_file_changes(overrides, tmp_path, small_corpus):
    cfg = load_config(None, overrides)
    workdir = Workdir(tmp_path / "work")
    workdir.root.mkdir()
    first = sweep_cost(cfg, workdir)[1]
    cached = json.loads(workdir.durations.read_text())
    assert len(cached) == sum(len(u) for u in load_csv_manifest(small_corpus.manifest).values())
    name = next(iter(cached))
    cached[name][2] = 0.1  # what the cache says is what is counted while the file is unchanged
    workdir.durations.write_text(json.dumps(cached))
    assert sum(sweep_cost(cfg, workdir)[1].values()) < sum(first.values()) - 0.3
    cached[name][0] += 1  # the file's size changed: it is read again
    workdir.durations.write_text(json.dumps(cached))
    assert sweep_cost(cfg, workdir)[1] == pytest.approx(first)


def test_without_a_figure_for_the_model_the_dry_run_says_which_keys_to_set(tiny_overrides, tmp_path, capsys):
    assert main(["sweep", "--dry-run", *tiny_overrides(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert "no throughput figure for 1 layers x 16 in bf16: set cost.train_audio_s_per_gpu_s" in out
    assert "cost of the whole sweep" not in out and "  cost: 2 epochs x train: " in out


def test_the_papers_backbone_has_an_estimate_marked_as_such():
    rate = throughput(load_config("paper", []))
    assert rate is not None and "estimate" in rate.source
    assert throughput(load_config("paper", ["cost.train_audio_s_per_gpu_s=900"])).train == 900.0


@functools.cache
def _replay_module():
    """benchmarks/tune_replay.py, loaded once."""
    import importlib.util

    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("tune_replay", REPO / "benchmarks" / "tune_replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _replayed_trial_epochs(scheduler, trials: int, curves: dict, concurrency: int) -> int:
    """The trial-epochs Ray's ``scheduler`` trains over ``curves`` (``trials`` points, one each, in order),
    replayed by benchmarks/tune_replay.py's loop."""
    order = iter(curves)

    def suggest(_trial_id: str):
        point = next(order, None)
        return None if point is None else dict(zip(("lambda_tl", "lambda_cl", "noise_minutes"), point, strict=True))

    return sum(t.epochs for t in _replay_module().Replay(scheduler, suggest, curves, concurrency, trials).run())


def _random_curves(trials: int, max_t: int, rng, seconds=lambda n: [1.0] * n) -> dict:
    """Fresh random non-decreasing best-so-far scores (and epoch seconds) for ``trials`` points."""
    return {(float(i), 1.0, 1.0): {"dev_score": list(np.maximum.accumulate(rng.uniform(0, 1, max_t))),
                                   "seconds": list(seconds(max_t))} for i in range(trials)}


@pytest.mark.parametrize(("trials", "max_t", "factor"), [(27, 9, 3), (17, 9, 3), (10, 4, 2), (8, 27, 3)])
def test_the_dry_runs_hyperband_count_is_what_rays_scheduler_trains(trials, max_t, factor, rng):
    from ray.tune.schedulers import HyperBandScheduler

    from ctsl_hpc.config import TuneConfig
    from ctsl_hpc.cost import search_trial_epochs

    # fresh random scores: Hyperband's count must not depend on them
    curves = _random_curves(trials, max_t, rng, seconds=lambda n: rng.uniform(1, 2, n))
    scheduler = HyperBandScheduler(time_attr="epoch", metric=_replay_module().METRIC, mode="max", max_t=max_t,
                                   reduction_factor=factor)
    trained = _replayed_trial_epochs(scheduler, trials, curves, concurrency=2)
    expected = search_trial_epochs(TuneConfig(scheduler="hyperband", num_samples=trials, max_t=max_t,
                                              reduction_factor=factor))
    assert expected == (trials * max_t, trained, "Hyperband's brackets")


@pytest.mark.parametrize(("grace", "factor", "brackets"), [(1, 3, 1), (2, 3, 2), (1, 3, 3), (1, 2, 2)])
def test_the_dry_runs_asha_estimate_is_near_what_rays_scheduler_trains(grace, factor, brackets, rng):
    """ASHA's promotions are asynchronous, so the dry run's count (synchronous halving over the brackets) is
    an estimate: on many trials of fresh random curves, one at a time, it stays within 15 % of Ray's."""
    from ray.tune.schedulers import ASHAScheduler

    from ctsl_hpc.config import TuneConfig
    from ctsl_hpc.cost import search_trial_epochs

    trials, max_t = 400, 9
    curves = _random_curves(trials, max_t, rng)
    np.random.seed(int(rng.integers(2**31)))  # ASHA draws each trial's bracket from numpy's global generator
    scheduler = ASHAScheduler(time_attr="epoch", metric=_replay_module().METRIC, mode="max", max_t=max_t,
                              grace_period=grace, reduction_factor=factor, brackets=brackets)
    trained = _replayed_trial_epochs(scheduler, trials, curves, concurrency=1)
    at_most, expected, how = search_trial_epochs(TuneConfig(num_samples=trials, max_t=max_t, grace_period=grace,
                                                            reduction_factor=factor, brackets=brackets))
    assert at_most == trials * max_t and how.startswith("ASHA")
    assert abs(expected - trained) <= 0.15 * trained, (expected, trained)
