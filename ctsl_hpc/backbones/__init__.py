"""Backbones shipped with the package, one folder each (``config.json``, ``model.safetensors``,
``PROVENANCE.json``); ``model.backbone`` names them by folder, :func:`ctsl_hpc.model.backbone_source`
finds them through :mod:`importlib.resources`. Torch-free: :func:`backbone_problem` says on a login
node, before anything is queued, whether ``model.backbone`` can be loaded where the jobs run.

- ``tiny-ssl``: the demo's tiny wav2vec2 (``model.tiny`` of ``configs/demo.yaml``), pre-trained
  self-supervised on noisy speech that the demo never uses, by ``python -m ctsl_hpc.launch pretrain``
  (its ``PROVENANCE.json`` holds the command, seed, data and losses).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def is_shipped_backbone(name: str) -> bool:
    """``name`` is a backbone folder of this package (``tiny-ssl``)."""
    return "/" not in name and (resources.files("ctsl_hpc.backbones") / name).is_dir()


def backbone_problem(name: str) -> str | None:
    """Why ``model.backbone`` cannot be loaded here, or None: ``tiny`` is built locally and a shipped
    backbone is in the package; a folder must hold a Hugging Face ``config.json`` and weights; a hub id
    must be in the local Hugging Face cache when the hub is offline (``HF_HUB_OFFLINE=1``, as on
    compute nodes)."""
    if name == "tiny" or is_shipped_backbone(name):
        return None
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            return f"{path} has no config.json: it is not a Hugging Face model folder"
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            return f"{path} has a config.json but no weights ({', '.join(WEIGHT_FILES[::2])})"
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str) or not constants.HF_HUB_OFFLINE:
        return None
    return (f"{name!r} is no folder, and the Hugging Face hub is offline (HF_HUB_OFFLINE=1) with no cached copy: "
            f"download it where the hub is reachable (hf download {name}) or give the folder")
