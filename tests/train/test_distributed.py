"""Data-parallel training: DDP and DeepSpeed ZeRO on 2 CPU ranks (gloo) equal one process.

The multi-rank tests start tests/train/dist_worker.py's ranks with tests/train/launch_ranks.py (one test
through ``torchrun``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ctsl_hpc.config import ConfigError, load_config
from ctsl_hpc.data.batching import LengthBucketSampler, ShardedBatchSampler
from ctsl_hpc.model import build_model, load_weights
from ctsl_hpc.train import checkpoint as ckpt
from ctsl_hpc.train.engines import OptimSettings
from ctsl_hpc.train.engines.deepspeed import fill_deepspeed_config, load_deepspeed_config
from ctsl_hpc.train.ranks import rank_env
from ctsl_hpc.workdir import RunDir
from tests.train.launch_ranks import launch

WORKER = Path(__file__).with_name("dist_worker.py")


# ---- fast unit tests -------------------------------------------------------------------------


def test_ranks_together_see_exactly_the_global_batches(rng):
    lengths = rng.integers(8000, 32000, size=37)
    full = LengthBucketSampler(lengths, 6, seed=4)
    full.set_epoch(2)
    shards = [ShardedBatchSampler(LengthBucketSampler(lengths, 6, seed=4), r, 3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    per_rank = [s.batches() for s in shards]
    assert len({len(b) for b in per_rank}) == 1
    expected = [sorted(b) for b in full.batches() if len(b) >= 3]
    assert [sorted(sum((rank[i] for rank in per_rank), [])) for i in range(len(expected))] == expected
    assert all(len(b) == 2 for b in per_rank[0])  # 37 = 6 x 6 + 1: the 1-item batch is dropped
    shards[1].set_epoch(2, start_batch=2)
    assert list(shards[1]) == per_rank[1][2:]


def test_global_batch_not_divisible_by_world_size_is_refused():
    with pytest.raises(ValueError, match="train.batch_size=5 is the global batch"):
        ShardedBatchSampler(LengthBucketSampler(np.full(10, 100), 5, seed=0), 0, 2)


def test_deepspeed_json_holds_only_zero_settings(tmp_path):
    for stage in (1, 2, 3):
        assert load_deepspeed_config(f"configs/deepspeed/zero{stage}.json")["zero_optimization"]["stage"] == stage
    bad = tmp_path / "bad.json"
    bad.write_text('{"train_batch_size": 64, "zero_optimization": {"stage": 2}}')
    with pytest.raises(ValueError, match="bad.json: train_batch_size come from the experiment config"):
        load_deepspeed_config(bad)
    with pytest.raises(ConfigError, match="train.deepspeed_config: config file .*missing.json does not exist"):
        load_deepspeed_config(tmp_path / "missing.json")
    assert load_deepspeed_config("zero3") == load_deepspeed_config("configs/deepspeed/zero3.json")  # a shipped name


def test_deepspeed_batch_sizes_and_precision_come_from_the_experiment():
    settings = OptimSettings(1e-4, 1.0, 3, 1.5, "auto", True, batch_size=32)
    config = fill_deepspeed_config({"zero_optimization": {"stage": 2}}, settings, world_size=4, bf16=True)
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["train_batch_size"] == 96 == 8 * 3 * 4
    assert config["gradient_accumulation_steps"] == 3 and config["gradient_clipping"] == 1.5
    assert config["bf16"] == {"enabled": True} and config["zero_optimization"] == {"stage": 2}
    with pytest.raises(ValueError, match="divisible by the world size 3"):
        fill_deepspeed_config({}, settings, world_size=3, bf16=False)


def test_without_rank_variables_a_process_is_a_world_of_one(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # rank_env exports into it: keep that out of later tests
    env = rank_env()
    assert (env.rank, env.world_size, env.local_rank) == (0, 1, 0)
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and 0 < int(os.environ["MASTER_PORT"]) < 65536


def test_a_half_set_rank_environment_is_refused(monkeypatch):
    for key in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RuntimeError, match="WORLD_SIZE, MASTER_ADDR, MASTER_PORT"):
        rank_env()


# ---- multi-rank runs (gloo) ---------------------------------------------------------------------


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name].float(), b[name].float(), atol=atol, rtol=1e-4, msg=name)


def losses(result: dict) -> list[float]:
    return [e["losses"]["total"] for e in result["epochs"]]


@pytest.fixture(scope="module")
def overrides(tiny_overrides, tmp_path_factory):
    # dropout 0: with dropout, masks depend on how the batch is split across ranks
    return [*tiny_overrides(tmp_path_factory.mktemp("w")), "model.dropout=0.0", "train.lr_decay=0.5"]


@pytest.fixture(scope="module")
def one_rank_zero2(overrides, tmp_path_factory):
    return launch(WORKER, 1, tmp_path_factory.mktemp("z2") / "one", [*overrides, "train.engine=deepspeed"])


@pytest.mark.slow
def test_two_ranks_zero2_match_one_rank_with_the_same_global_batch(overrides, one_rank_zero2, tmp_path, monkeypatch):
    extensions = tmp_path / "extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))  # where DeepSpeed would JIT-compile an op
    two = launch(WORKER, 2, tmp_path / "two", [*overrides, "train.engine=deepspeed"])
    assert not extensions.exists(), sorted(extensions.rglob("*"))  # two CPU ranks compiled nothing
    assert len(two["epochs"]) == 2
    np.testing.assert_allclose(losses(two), losses(one_rank_zero2), rtol=1e-5)
    np.testing.assert_allclose(
        [e["dev_ccc"] for e in two["epochs"]], [e["dev_ccc"] for e in one_rank_zero2["epochs"]], atol=1e-4
    )
    assert_same_weights(two["weights"], one_rank_zero2["weights"], atol=2e-5)
    run = tmp_path / "two"
    assert all((p / ckpt.MARKER).is_file() for p in ckpt.complete_checkpoints(run))
    assert not list(RunDir(run).checkpoints.glob("*.tmp"))


@pytest.mark.slow
def test_two_ranks_ddp_match_one_rank(overrides, one_rank_zero2, tmp_path):
    two = launch(WORKER, 2, tmp_path / "ddp", [*overrides, "train.engine=ddp"], torchrun=True)
    np.testing.assert_allclose(losses(two), losses(one_rank_zero2), rtol=1e-5)
    assert_same_weights(two["weights"], one_rank_zero2["weights"], atol=2e-5)


@pytest.mark.slow
def test_two_ranks_zero3_save_consolidated_epoch_weights(overrides, one_rank_zero2, tmp_path):
    zero3 = [*overrides, "train.engine=deepspeed", "train.deepspeed_config=configs/deepspeed/zero3.json"]
    two = launch(WORKER, 2, tmp_path / "z3", zero3)
    np.testing.assert_allclose(losses(two), losses(one_rank_zero2), rtol=1e-5)
    saved = load_weights(tmp_path / "z3" / "epochs" / "epoch-002")
    assert_same_weights(saved, one_rank_zero2["weights"], atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["RH", "RM+CL"])  # RM: RM+CL less its term; RM+TL: test_slurm_deepspeed; RM+TL+CL: below
def test_each_student_variant_on_two_zero2_ranks_matches_one_rank(overrides, variant, tmp_path):
    student = [*overrides, "train.engine=deepspeed"]
    one = launch(WORKER, 1, tmp_path / "one", student, "--variant", variant)
    two = launch(WORKER, 2, tmp_path / "two", student, "--variant", variant)
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    assert_same_weights(two["weights"], one["weights"], atol=2e-5)
    torch.manual_seed(0)  # the worker's initial model (--init-seed 0)
    initial = build_model(load_config(None, overrides).model).state_dict()
    moved = {name for name, value in two["weights"].items() if not torch.equal(value, initial[name])}
    assert any(name.startswith("head.") for name in moved)
    backbone_moved = any(name.startswith("backbone.encoder.") for name in moved)
    assert backbone_moved == (variant != "RH"), sorted(moved)


@pytest.mark.slow
def test_student_interrupted_on_two_ranks_and_resumed_equals_uninterrupted(overrides, tmp_path):
    student = [*overrides, "train.engine=deepspeed", "train.grad_accum=2"]
    args = ("--variant", "RM+TL+CL")
    straight = launch(WORKER, 2, tmp_path / "straight", student, *args)
    cut = launch(WORKER, 2, tmp_path / "cut", student, *args, "--stop-after", "4")
    assert cut["stopped"] is not None
    saved = ckpt.load_trainer_state(Path(cut["stopped"]))
    assert saved["epoch"] == 1 and saved["batch"] > 0  # stopped inside the second epoch
    resumed = launch(WORKER, 2, tmp_path / "cut", student, *args, "--init-seed", "99")
    assert losses(resumed) == losses(straight)
    assert_same_weights(resumed["weights"], straight["weights"], atol=0)

    # the same checkpoint on ONE rank: the consolidated fp32 weights of the 2-rank shards
    loaded = launch(WORKER, 1, tmp_path / "load", student, "--mode", "load", "--checkpoint", cut["stopped"], "--init-seed", "5")
    assert_same_weights(loaded["weights"], cut["weights"], atol=0)
