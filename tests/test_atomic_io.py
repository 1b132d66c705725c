"""Durable writes: a spy on ``os.fsync`` sees what reaches the disk, and in which order, before a record or a
checkpoint counts as written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import torch

from ctsl_hpc.atomic_io import atomic_write_json
from ctsl_hpc.train.checkpoint import MARKER, save_checkpoint


def _spy_on_fsync(monkeypatch) -> list[tuple[str, str]]:
    """Every fsync from now on, as (``file`` or ``folder``, the path it synced), in order."""
    synced: list[tuple[str, str]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_an_atomic_write_syncs_the_file_then_its_folder_after_the_rename(tmp_path, monkeypatch):
    synced = _spy_on_fsync(monkeypatch)
    atomic_write_json(tmp_path / "summary.json", {"ccc": 0.5})
    assert [kind for kind, _ in synced] == ["file", "folder"]
    assert Path(synced[0][1]).parent == tmp_path and synced[1][1] == str(tmp_path)
    assert not Path(synced[0][1]).exists()  # the temporary name that was renamed into place


def test_every_checkpoint_file_reaches_the_disk_before_its_complete_marker(tmp_path, monkeypatch):
    synced = _spy_on_fsync(monkeypatch)

    def write_engine_state(folder: Path) -> None:
        torch.save({"w": torch.randn(3)}, folder / "model.pt")
        (folder / "zero").mkdir()
        torch.save({"m": torch.randn(3)}, folder / "zero" / "optim_states.pt")

    final = save_checkpoint(tmp_path, 7, {"epoch": 1}, write_engine_state)
    written = {str(p) for p in final.rglob("*") if p.is_file() and p.name != MARKER}
    marker_at = next(i for i, (kind, path) in enumerate(synced) if kind == "file" and MARKER in Path(path).name)
    before = synced[:marker_at]
    assert written <= {path for kind, path in before if kind == "file"}  # model, optimiser, trainer.pt
    assert {str(final), str(final / "zero"), str(final.parent)} <= {path for kind, path in before if kind == "folder"}
    assert synced[-1] == ("folder", str(final))  # the marker's own name is on the disk too
    assert (final / MARKER).read_text() == "7\n"
