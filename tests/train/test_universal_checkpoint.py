"""A changed world size keeps the optimiser state: DeepSpeed's universal checkpoint (ZeRO-2, CPU, fp32).

A 2-rank (or 1-rank) ZeRO-2 run is cut after two optimiser steps by tests/train/dist_worker.py;
tests/train/universal_worker.py, run on the other world size, then builds a
differently initialised engine, ``load``s the checkpoint and reports the fp32 weights, Adam's
moments and step it holds, and the weights after one more optimiser step on a fixed random batch
(ranks started by tests/train/launch_ranks.py).

The moments are checked against the ZeRO-2 shard files read here, independently of
``ds_to_universal``: the ranks' flat fp32 partitions concatenated, DeepSpeed's padding removed and
cut into parameters in the order the model-state file records.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch

from tests.train.launch_ranks import launch

WORKER = Path(__file__).with_name("universal_worker.py")
DIST_WORKER = Path(__file__).with_name("dist_worker.py")


# ---- the tests ---------------------------------------------------------------------------------


def fit_and_cut(nproc: int, run_dir: Path, overrides: list[str], init_seed: int, *args: str) -> tuple[Path, dict]:
    """dist_worker.py's training on ``nproc`` ranks, stopped (and checkpointed) after 2 optimiser steps."""
    stop = ("--stop-after", "2", "--init-seed", str(init_seed), *args)
    cut = launch(DIST_WORKER, nproc, run_dir, overrides, *stop)
    assert cut["stopped"] is not None
    return Path(cut["stopped"]), cut["weights"]


def zero2_shard_moments(checkpoint: Path) -> tuple[dict[str, dict[str, torch.Tensor]], set[int]]:
    """Per parameter fp32 weights and Adam moments, and the step, read from the ZeRO-2 shard files.

    Each ``zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` holds rank r's slice of one flat fp32
    buffer per parameter group; the slices concatenated are the parameters in the order of the
    model-state file's ``param_shapes``, each followed by its alignment padding
    (``param_alignment_paddings``); the moments also hold the padding that makes the group
    divisible by the world size (``group_paddings``, at the end of the last rank's slice), the
    weights do not (DeepSpeed strips it when saving them).
    """
    from ctsl_hpc.train.engines.deepspeed_checkpoints import DS_TAG, load_shard

    folder = checkpoint / DS_TAG
    files = sorted(folder.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"), key=lambda f: int(f.name.split("_")[3]))
    shards = [load_shard(f)["optimizer_state_dict"] for f in files]
    assert [s["partition_count"] for s in shards] == [[len(files)]] * len(files)
    shapes = load_shard(folder / "mp_rank_00_model_states.pt")["param_shapes"]
    params: dict[str, dict[str, torch.Tensor]] = {}
    steps = set()
    for group, group_shapes in enumerate(shapes):
        flat = {
            "fp32": torch.cat([s["single_partition_of_fp32_groups"][group] for s in shards]),
            "exp_avg": torch.cat([s["base_optimizer_state"]["state"][group]["exp_avg"] for s in shards]),
            "exp_avg_sq": torch.cat([s["base_optimizer_state"]["state"][group]["exp_avg_sq"] for s in shards]),
        }
        steps |= {int(s["base_optimizer_state"]["state"][group]["step"]) for s in shards}
        paddings = shards[0]["param_alignment_paddings"][group]
        offset = 0
        for (name, shape), padding in zip(group_shapes.items(), paddings, strict=True):
            numel = math.prod(shape)
            params[name] = {key: value[offset : offset + numel].view(shape) for key, value in flat.items()}
            offset += numel + padding
        # nothing left over, nothing missing: the moments keep the group padding, the weights do not
        padded = offset + shards[-1]["group_paddings"][group]
        assert (flat["fp32"].numel(), flat["exp_avg"].numel(), flat["exp_avg_sq"].numel()) == (offset, padded, padded)
    return params, steps


def assert_equal_tensors(a: dict, b: dict, atol: float = 0.0, rtol: float = 0.0, what: str = "") -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(value.float(), b[name].float(), atol=atol, rtol=rtol, msg=f"{what} {name}")


@pytest.fixture(scope="module")
def overrides(tiny_overrides, tmp_path_factory):
    # dropout 0: masks would depend on how the batch is split; lr 1e-3: a step moves weights by
    # about 1e-3, far above the float noise between world sizes
    return [
        *tiny_overrides(tmp_path_factory.mktemp("w")),
        "model.dropout=0.0",
        "train.lr=1e-3",
        "train.engine=deepspeed",
        "train.deepspeed_config=configs/deepspeed/zero2.json",
    ]


@pytest.fixture(scope="module")
def seed() -> int:
    value = int.from_bytes(os.urandom(4), "little") % 2**31
    print(f"test_universal_checkpoint: seed {value}")
    return value


@pytest.fixture(scope="module")
def two_rank_cut(overrides, seed, tmp_path_factory):
    """A ZeRO-2 checkpoint of 2 ranks (randomly initialised model) and its weights."""
    return fit_and_cut(2, tmp_path_factory.mktemp("two") / "run", overrides, seed)


def check_resume(checkpoint: Path, saved_weights: dict, changed: dict, same: dict, zero2: bool = True) -> None:
    """``changed``: the worker's report on the other world size; ``same``: on the saving one.
    ``zero2``: compare the moments with the ZeRO-2 shard files (ZeRO-3 shards: (c) alone)."""
    from ctsl_hpc.train.engines.deepspeed_checkpoints import UNIVERSAL_TAG, complete_universal

    assert complete_universal(checkpoint / UNIVERSAL_TAG)
    # (a) the fp32 weights (and buffers) are the saved ones, exactly
    assert_equal_tensors(changed["loaded"], saved_weights, what="weights")
    assert_equal_tensors(same["loaded"], saved_weights, what="weights (same world size)")
    # (b) Adam's moments and step are the shards', read independently of the converter
    assert changed["steps"] == same["steps"] == {2} and changed["global_steps"] == 2
    assert changed["moments"]
    if zero2:
        shards, steps = zero2_shard_moments(checkpoint)
        assert steps == {2} and changed["moments"].keys() == shards.keys()
    for name, moments in changed["moments"].items():
        assert all(m.abs().max() > 0 for m in moments.values()), f"{name}: a restart would pass this check"
        if not zero2:
            continue
        torch.testing.assert_close(shards[name]["fp32"], saved_weights[name], atol=0, rtol=0, msg=name)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(moments[key], shards[name][key], atol=0, rtol=0, msg=f"{name} {key}")
    assert changed["lr"] == same["lr"]
    # (c) one more step equals the saving world size's next step on the same global batch
    update = {k: changed["stepped"][k] - changed["loaded"][k] for k in changed["loaded"]}
    reference = {k: same["stepped"][k] - same["loaded"][k] for k in same["loaded"]}
    assert max(u.abs().max() for u in reference.values()) > 1e-4  # the step moved the weights
    assert_equal_tensors(update, reference, atol=1e-6, rtol=1e-3, what="update")


@pytest.mark.slow
def test_two_zero2_ranks_resumed_on_one_keep_weights_moments_and_step(overrides, seed, two_rank_cut, tmp_path):
    """2 ranks -> 1 rank. (c) compares the first step after the load with the 2-rank run's own next
    step (DeepSpeed's same-topology load, the same global batch) rather than with a 1-rank engine
    whose moments we set by hand: it checks the whole path (conversion, loading, the optimiser's
    flat buffers and step count, our lr restore) against what an uninterrupted run does. A restart
    of the moments would make the first step a sign step (|update| = lr for nearly every element),
    far outside the tolerance (1e-6 absolute + 1e-3 relative of a ~1e-3 update)."""
    checkpoint, saved = two_rank_cut
    batch = ["--checkpoint", str(checkpoint), "--batch-seed", str(seed + 1)]
    one = launch(WORKER, 1, tmp_path / "one", overrides, *batch, "--moments")
    two = launch(WORKER, 2, tmp_path / "two", overrides, *batch)
    check_resume(checkpoint, saved, changed=one, same=two)


@pytest.mark.slow
def test_one_zero2_rank_resumed_on_two_keeps_weights_moments_and_step(overrides, seed, tmp_path):
    """1 rank -> 2 ranks, the RH student (frozen backbone): each rank takes its new partition of
    the universal checkpoint; the frozen weights, which are not in the optimiser (so not in the
    universal loading), come from the saved module state."""
    checkpoint, saved = fit_and_cut(1, tmp_path / "run", overrides, seed + 2, "--variant", "RH")
    batch = ["--checkpoint", str(checkpoint), "--batch-seed", str(seed + 3), "--freeze-backbone"]
    two = launch(WORKER, 2, tmp_path / "two", overrides, *batch, "--moments")
    one = launch(WORKER, 1, tmp_path / "one", overrides, *batch)
    check_resume(checkpoint, saved, changed=two, same=one)
    assert all(name.startswith("head.") for name in two["moments"])


@pytest.mark.slow
def test_two_zero3_ranks_resumed_on_one_keep_weights_and_step(overrides, seed, tmp_path):
    """ZeRO-3, 2 ranks -> 1 rank, the RH student: DeepSpeed's ZeRO-3 universal loading, the frozen
    backbone from the consolidated checkpoint. The moments are checked through (c) only."""
    zero3 = [*overrides, "train.deepspeed_config=configs/deepspeed/zero3.json"]
    checkpoint, saved = fit_and_cut(2, tmp_path / "run", zero3, seed + 4, "--variant", "RH")
    batch = ["--checkpoint", str(checkpoint), "--batch-seed", str(seed + 5), "--freeze-backbone"]
    one = launch(WORKER, 1, tmp_path / "one", zero3, *batch, "--moments")
    two = launch(WORKER, 2, tmp_path / "two", zero3, *batch)
    check_resume(checkpoint, saved, changed=one, same=two, zero2=False)


@contextmanager
def counting_conversions():
    from deepspeed.checkpoint import ds_to_universal

    calls = []
    original = ds_to_universal.main

    def counted(args):
        calls.append(args.output_folder)
        return original(args)

    with mock.patch.object(ds_to_universal, "main", counted):
        yield calls


@pytest.mark.slow
def test_an_incomplete_conversion_is_redone_not_trusted(two_rank_cut, tmp_path):
    """(d) A complete conversion is reused; a truncated file, a missing manifest, a removed folder or
    a left-over temporary folder (a kill mid-conversion) make it be converted again."""
    import shutil

    from ctsl_hpc.train.engines import deepspeed_checkpoints as ds

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(two_rank_cut[0], checkpoint, ignore=shutil.ignore_patterns(f"{ds.UNIVERSAL_TAG}*"))
    folder = checkpoint / ds.UNIVERSAL_TAG
    with counting_conversions() as calls:
        assert ds.convert_to_universal(checkpoint) == folder
        assert len(calls) == 1 and ds.complete_universal(folder)
        assert not (checkpoint / f"{ds.UNIVERSAL_TAG}.tmp").exists() and not (checkpoint / "latest_universal").exists()
        manifest = json.loads((folder / ds.UNIVERSAL_MANIFEST).read_text())
        weights = max((folder / "zero").glob("*/fp32.pt"))  # one parameter's fp32 weights
        good = weights.read_bytes()
        assert str(weights.relative_to(folder)) in manifest

        ds.convert_to_universal(checkpoint)
        assert len(calls) == 1  # reused

        weights.write_bytes(good[: len(good) // 2])  # truncated
        assert not ds.complete_universal(folder)
        ds.convert_to_universal(checkpoint)
        assert len(calls) == 2 and weights.read_bytes() == good

        (folder / ds.UNIVERSAL_MANIFEST).unlink()  # cut before the manifest: never trusted
        ds.convert_to_universal(checkpoint)
        assert len(calls) == 3 and ds.complete_universal(folder)

        shutil.rmtree(folder)
        stale = checkpoint / f"{ds.UNIVERSAL_TAG}.tmp" / ds.UNIVERSAL_TAG / "zero"
        stale.mkdir(parents=True)  # a conversion killed half-way
        ds.convert_to_universal(checkpoint)
        assert len(calls) == 4 and ds.complete_universal(folder) and weights.read_bytes() == good
        assert not stale.parent.parent.exists()


def test_universal_loading_is_skipped_where_deepspeed_cannot_map_the_state():
    pytest.importorskip("deepspeed")
    from ctsl_hpc.train.engines.deepspeed_checkpoints import universal_unsupported

    for saved, now in [(1, 2), (2, 1), (2, 2), (3, 3)]:
        assert universal_unsupported(saved, now) is None
    assert "ZeRO-3" in universal_unsupported(3, 2) and "ZeRO-3" in universal_unsupported(2, 3)
    assert "ZeRO-0" in universal_unsupported(0, 2)
