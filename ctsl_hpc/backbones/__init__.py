"""Backbones shipped with the package, one folder each (``config.json``, ``model.safetensors``,
``PROVENANCE.json``); ``model.backbone`` names them by folder, :func:`ctsl_hpc.model.backbone_source`
finds them through :mod:`importlib.resources`.

- ``tiny-ssl``: the demo's tiny wav2vec2 (``model.tiny`` of ``configs/demo.yaml``), pre-trained
  self-supervised on noisy speech that the demo never uses, by ``python -m ctsl_hpc.launch pretrain``
  (its ``PROVENANCE.json`` holds the command, seed, data and losses).
"""
