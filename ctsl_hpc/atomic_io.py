"""The package's records (summaries, histories, registries, manifests): written whole or not at all,
read back with an error that names the file and a way out.

Every record is written through a uniquely named temporary file in the same folder, synced, renamed
into place and its folder synced (:func:`atomic_write_bytes`), so a reader never sees half a file,
concurrent writers (the ranks of a job, array tasks) never collide, and after a power loss the record
is the new one or the old one. A write that fails (disk full, read-only storage, permissions)
raises ``OSError`` naming the file and leaves the previous version in place. Files written by
DeepSpeed, MLflow or Ray are theirs.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "summary.json"
    >>> _ = atomic_write_json(path, {"best_epoch": 3})
    >>> read_json(path, "delete it to recompute it")
    {'best_epoch': 3}
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    """A record is torn or unreadable; the message names it and what to do."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a uniquely named temporary file and a rename."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes owner-only files; a record follows the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        sync_folder(path.parent)  # the rename itself reaches the disk: after a power loss, the new file or the old
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """fsync a folder: the names created, renamed or removed in it are on the disk once it returns."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and folder under ``root`` (a checkpoint a marker is about to call complete), then ``root``'s
    parent, which holds its name."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_folder(folder)
    sync_folder(Path(root).parent)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """Files and folders made meanwhile are readable and writable by their owner alone (umask 077)."""
    mask = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(mask)


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Name ``path`` in a write error raised inside, where the writer did not (a file's ``write``,
    torch's serializer, DeepSpeed's checkpoint), so a full or read-only disk ends in one clear line."""
    try:
        yield
    except OSError as exc:
        if exc.filename:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except RuntimeError as exc:  # torch: "PytorchStreamWriter failed writing file ...", "unexpected pos 48192 vs ..."
        code = _why_not_written(Path(path))
        if code == errno.EIO and "writ" not in str(exc).lower():
            raise  # the disk has room and is writable: an error of the writer's own
        raise OSError(code, os.strerror(code), str(path)) from None


def _why_not_written(path: Path) -> int:
    """The likely errno of a write that failed without one: a full disk, no permission, or an I/O error."""
    folder = path if path.is_dir() else path.parent
    try:
        usage = shutil.disk_usage(folder)
        if usage.free < min(1 << 20, usage.total // 100):
            return errno.ENOSPC
    except OSError:
        pass
    return errno.EIO if os.access(folder, os.W_OK) else errno.EACCES


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` (UTF-8)."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = True, allow_nan: bool = True) -> Path:
    """:func:`atomic_write_text` of ``data`` as indented JSON; ``sort_keys=False`` keeps the mappings' order (a
    table's rows), ``allow_nan=False`` refuses NaN and infinities (tables write them as null)."""
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=sort_keys, allow_nan=allow_nan))


def atomic_write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """:func:`atomic_write_text` of a CSV table: ``header``, then ``rows``."""
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, table.getvalue())


def read_json(path: str | os.PathLike[str], remedy: str) -> Any:
    """A JSON record; a torn or unreadable one raises :class:`RecordError` naming it and ``remedy``."""
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path} is torn or unreadable ({exc}): {remedy}") from None
