"""DeepSpeed's checkpoint files: loaded without unpickling anything else, and converted to DeepSpeed's
universal checkpoint (once, verified by a manifest) so that a run resumes on another world size.

Also :func:`import_deepspeed`, the one way this package imports DeepSpeed.
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

DS_TAG = "deepspeed"
# the universal conversion of DS_TAG (a sibling folder of the same checkpoint) and its manifest,
# written last: the relative path and size of every file, checked before the folder is reused
UNIVERSAL_TAG = "deepspeed_universal"
UNIVERSAL_MANIFEST = "COMPLETE.json"


def import_deepspeed() -> types.ModuleType:
    """DeepSpeed, imported with MLflow hidden from its autotuner where this process has not imported MLflow.

    ``deepspeed/autotuning/autotuner.py`` imports MLflow when DeepSpeed is imported, for the autotuner's own
    logging, which this package never runs: about 2 s of CPU (MLflow, FastAPI, pandas, pyarrow) on every rank,
    most of which track nothing. ``None`` in ``sys.modules`` makes that ``import mlflow`` fail, which the
    autotuner handles (``has_mlflow = False``); MLflow imports normally afterwards. The package's code calls
    this before any other import from DeepSpeed (the engine, :func:`load_shard`, the universal conversion).

    On the CPU accelerator, DeepSpeed's communication backend also JIT-compiles a shared-memory all-reduce op
    when it starts (``deepspeed.comm.torch.build_shm_op``), which only ``inference_all_reduce`` uses: training
    reduces through ``torch.distributed``. That compile costs about 60 s of CPU (and g++) on every new machine,
    so it is skipped here; on a GPU the accelerator has no such op and nothing changes.
    """
    if "deepspeed" not in sys.modules and "mlflow" not in sys.modules:
        sys.modules["mlflow"] = None  # type: ignore[assignment]
        try:
            import deepspeed  # noqa: F401
        finally:
            del sys.modules["mlflow"]
    import deepspeed

    # by its module's name: ``deepspeed.comm``'s attribute ``torch`` is the torch package, not this module
    importlib.import_module("deepspeed.comm.torch").build_shm_op = _no_inference_op
    return deepspeed


def _no_inference_op() -> None:
    """What ``build_shm_op`` returns where the op is unavailable: the backend then reduces through torch."""
    return None


def load_shard(path: Path) -> Any:
    """A DeepSpeed checkpoint file, unpickling only tensors, plain data and DeepSpeed's checkpoint classes."""
    import_deepspeed()
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([ZeroStageEnum, LossScaler, fragment_address]):
        return torch.load(path, map_location="cpu", weights_only=True)


def check_shards(folder: Path) -> None:
    """Refuse DeepSpeed checkpoint files that hold anything but tensors, plain data and DeepSpeed's own
    checkpoint classes, before DeepSpeed (which unpickles them without restriction) loads them.

    Every ``*.pt`` below ``folder``: a universal checkpoint keeps one folder per parameter
    (``zero/<name>/fp32.pt``, ``exp_avg.pt``, ``exp_avg_sq.pt``, ``step.pt``: tensors and ints) and
    ``zero/optimizer_state.pt`` (the loss scaler, the ZeRO stage and plain data), all covered by
    the same classes as the ZeRO shards."""
    for shard in sorted(folder.rglob("*.pt")):
        try:
            load_shard(shard)
        except pickle.UnpicklingError as exc:
            raise pickle.UnpicklingError(
                f"{shard} holds more than tensors and DeepSpeed's checkpoint data ({str(exc).splitlines()[0]}); "
                "refusing to load it: a work directory must come from someone you trust"
            ) from None


def universal_unsupported(saved_stage: int, stage: int) -> str | None:
    """Why a ZeRO-``saved_stage`` checkpoint cannot be loaded as a universal checkpoint into
    ZeRO-``stage`` (None: it can)."""
    if 0 in (saved_stage, stage):
        return "ZeRO-0 keeps no ZeRO optimizer shards to convert"
    if (saved_stage == 3) != (stage == 3):
        return "DeepSpeed's universal loading does not map ZeRO-3 state to ZeRO-1/2 or back"
    try:
        import_deepspeed()
        from deepspeed.checkpoint import ds_to_universal
    except ImportError as exc:
        return f"this DeepSpeed has no universal checkpoint converter ({exc})"
    if not hasattr(ds_to_universal, "main"):
        return "this DeepSpeed's ds_to_universal has no main()"
    return None


def _manifest(folder: Path) -> dict[str, int]:
    return {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}


def complete_universal(folder: Path) -> bool:
    """``folder`` holds a finished conversion: its manifest is there and every file has its size."""
    try:
        manifest = json.loads((folder / UNIVERSAL_MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    files = _manifest(folder)
    files.pop(UNIVERSAL_MANIFEST, None)
    return isinstance(manifest, dict) and bool(manifest) and manifest == files


def convert_to_universal(directory: Path) -> Path:
    """``directory/UNIVERSAL_TAG``: the universal checkpoint of ``directory/DS_TAG`` (one process).

    A complete earlier conversion is reused; anything else there (cut short, truncated) is
    deleted and redone. The conversion is written to ``directory/UNIVERSAL_TAG.tmp/UNIVERSAL_TAG``
    (ds_to_universal also writes a ``latest_universal`` file next to its output folder: it stays
    in the temporary folder), the manifest last, then renamed into place.
    """
    import_deepspeed()
    from deepspeed.checkpoint import ds_to_universal

    final = directory / UNIVERSAL_TAG
    if complete_universal(final):
        return final
    work = directory / f"{UNIVERSAL_TAG}.tmp"
    for stale in (final, work):
        if stale.exists():
            log.warning("%s is an incomplete universal conversion: deleting it", stale)
            shutil.rmtree(stale)
    output = work / UNIVERSAL_TAG
    # ds_to_universal.main takes its command line's argparse namespace (deepspeed 0.19.8,
    # deepspeed/checkpoint/ds_to_universal.py: parse_arguments, main); these are its fields. One
    # worker each: no process pool (main runs in this process, the work is dominated by file I/O).
    args = types.SimpleNamespace(
        input_folder=str(directory / DS_TAG),
        output_folder=str(output),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        # our engine registers no UNIVERSAL_CHECKPOINT_INFO (no tensor/pipeline parallelism):
        # let the converter add the default (version only) instead of refusing the checkpoint
        inject_missing_state=True,
    )
    started = time.perf_counter()
    ds_to_universal.main(args)
    (output / UNIVERSAL_MANIFEST).write_text(json.dumps(_manifest(output)))
    output.rename(final)
    shutil.rmtree(work)
    log.info("converted %s to a universal checkpoint in %.1f s", directory / DS_TAG, time.perf_counter() - started)
    return final
