"""Files the package reads back hold tensors and plain data only: model weights and the embedding cache as
safetensors, checkpoints through torch's tensors-only unpickler, DeepSpeed's shards checked before DeepSpeed
unpickles them. Work directories written before (torch-pickled weights) are still read."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from ctsl_hpc.config import load_config
from ctsl_hpc.model import LEGACY_WEIGHTS_FILE, WEIGHTS_FILE, build_model, load_model, load_weights, save_model
from ctsl_hpc.train import checkpoint as ckpt


class _Exploit:
    """What a tampered file could hold: unpickling it would run a command."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.fixture
def model(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    cfg = load_config(None, ["model.tiny.hidden_size=16", "model.tiny.intermediate_size=32", "model.tiny.conv_dim=16",
                             "model.tiny.heads=2", "model.head_hidden=8"])
    return build_model(cfg.model)


def test_weights_are_safetensors_and_a_legacy_torch_file_still_loads(model, tmp_path):
    save_model(model, tmp_path / "new", None)
    assert (tmp_path / "new" / WEIGHTS_FILE).is_file() and not (tmp_path / "new" / LEGACY_WEIGHTS_FILE).exists()
    legacy = tmp_path / "legacy"
    save_model(model, legacy, None)
    (legacy / WEIGHTS_FILE).unlink()
    torch.save(model.state_dict(), legacy / LEGACY_WEIGHTS_FILE)  # what the package wrote before
    for folder in (tmp_path / "new", legacy):
        loaded, _, _ = load_model(folder)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_tampered_legacy_weights_file_is_refused_without_running_it(model, tmp_path):
    save_model(model, tmp_path, None)
    (tmp_path / WEIGHTS_FILE).unlink()
    torch.save({"weights": _Exploit(str(tmp_path / "pwned"))}, tmp_path / LEGACY_WEIGHTS_FILE)
    with pytest.raises(pickle.UnpicklingError):
        load_weights(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_state_with_numpy_rng_loads_and_a_tampered_one_is_refused(tmp_path):
    state = {"epoch": 2, "rng": ckpt.rng_state(), "history": [{"epoch": 1, "dev_score": 0.5}]}
    torch.save(state, tmp_path / ckpt.TRAINER_FILE)
    loaded = ckpt.load_trainer_state(tmp_path)
    assert loaded["epoch"] == 2 and (loaded["rng"]["numpy"][1] == state["rng"]["numpy"][1]).all()
    torch.save({**state, "extra": _Exploit(str(tmp_path / "pwned"))}, tmp_path / ckpt.TRAINER_FILE)
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_trainer_state(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_deepspeed_shards_are_checked_before_deepspeed_reads_them(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from ctsl_hpc.train.engines.deepspeed_checkpoints import check_shards

    torch.save({"loss_scaler": LossScaler(1.0), "state": {"exp_avg": torch.ones(3)}}, tmp_path / "optim_states.pt")
    check_shards(tmp_path)  # DeepSpeed's own checkpoint classes pass
    torch.save({"x": _Exploit(str(tmp_path / "pwned"))}, tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(pickle.UnpicklingError, match="zero_pp_rank_0.*a work directory must come from someone you trust"):
        check_shards(tmp_path)
    assert not (tmp_path / "pwned").exists()
