"""Every audio file checked before any training, in parallel, remembered per file as it goes.

A corrupt, silent or too short file used to surface after the teacher and every student had
trained. :func:`audit` reads each file once: its bytes are hashed (the corpus fingerprint is made of
these digests) and decoded from memory the way training reads it (the crop to ``max_seconds``, the
silence and length checks of :func:`~ctsl_hpc.data.audio.read_audio`); the samples' moments come
along for the waveform statistics and the header's duration for the cost estimate. Files are
spread over processes (this one and helpers); each appends its verdicts to a JSON-lines cache as soon as they are
known, with the file's size and modification time, so a killed check keeps what it did and a rerun
decodes only what is new or changed. Progress is a bar on a terminal and, in a batch log, a line at
least every :data:`PROGRESS_EVERY_S` seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from ..logs import quiet_progress
from .audio import AudioError, Moments, read_audio
from .corpus import Utterance

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 15.0  # a batch log hears from a long check at least this often (a terminal gets a bar)
_CHUNK = 32  # files between two cache flushes and stop checks
_IN_FLIGHT_PER_HELPER = 8  # chunks queued per helper process: it never waits for the parent's next one
# A helper process costs 0.2-0.4 s of CPU to start (an interpreter, this module, the parent's main module:
# submitit's or the launcher's), what checking about 1,500 files takes: a helper for every this many files.
FILES_PER_HELPER = 2000


@dataclass(frozen=True)
class Reading:
    """How a file is read: what its verdict holds for (utterances are cropped, noise files read whole)."""

    sample_rate: int
    max_seconds: float | None = None
    min_seconds: float = 0.0


@dataclass(frozen=True)
class AudioVerdict:
    """One file as training would read it: its content hash, why it is unusable (None: usable), the whole
    file's duration and the moments of the samples training reads (None when unusable)."""

    digest: str
    problem: str | None
    seconds: float = 0.0
    moments: Moments | None = None


def file_stamp(path: Path, reading: Reading) -> list:
    """What a cached verdict holds for: the file's size and modification time, and how it was read."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, reading.sample_rate, reading.max_seconds, reading.min_seconds]


def check_file(path: str, reading: Reading) -> tuple[str, list | None, AudioVerdict]:
    """Read ``path`` once and judge it; (path, its stamp, the verdict). The stamp is None when the file
    cannot even be opened (a verdict that is never cached: the file may appear)."""
    file = Path(path)
    try:
        stamp = file_stamp(file, reading)
        content = file.read_bytes()
    except OSError as exc:
        return path, None, AudioVerdict("", f"{file}: cannot read ({exc.strerror})")
    digest = hashlib.sha256(content).hexdigest()
    try:
        with sf.SoundFile(io.BytesIO(content)) as header:  # the header alone: sf.info also formats its fields
            seconds = header.frames / header.samplerate
        wave = read_audio(file, reading.sample_rate, reading.max_seconds, reading.min_seconds, content=content)
        return path, stamp, AudioVerdict(digest, None, seconds, Moments.of(wave))
    except (sf.SoundFileError, RuntimeError):
        return path, stamp, AudioVerdict(digest, f"{file}: cannot read audio (no audio header)")
    except AudioError as exc:  # decodable header, unusable audio (empty, silent, too short, NaN)
        return path, stamp, AudioVerdict(digest, str(exc), seconds)


def _check_chunk(args: tuple[int, list[str], Reading, VerdictCache]) -> tuple[int, list[tuple]]:
    """Check one chunk of files and append their cache lines; (the chunk's index, each verdict's fields).

    The worker writes the lines itself and sends back plain tuples in the chunk's order (dataclasses
    unpickle several times slower): the parent, whose CPU the workers share, only builds the verdicts."""
    index, paths, reading, cache = args
    checked = [check_file(path, reading) for path in paths]
    cache.append([cache.line(path, stamp, verdict) for path, stamp, verdict in checked if stamp is not None])
    return index, [(v.digest, v.problem, v.seconds, None if v.moments is None else astuple(v.moments))
                   for _, _, v in checked]


class AuditStopped(RuntimeError):
    """The check stopped on request; every verdict reached so far is in the cache."""


class VerdictCache:
    """The JSON-lines file of verdicts: one line per checked file, appended as checks finish (the last
    line for a path wins; a line torn by a kill is ignored). A file under ``root`` (the work directory:
    the demo corpus) is named relative to it, so that the work directory may move."""

    def __init__(self, path: Path, root: Path | None = None):
        self.path = Path(path)
        self.root = None if root is None else Path(root).resolve()

    def key(self, name: str) -> str:
        if self.root is not None:
            relative = os.path.relpath(name, self.root)
            if not relative.startswith(".."):
                return relative
        return name

    def lookup(self, known: dict[str, tuple[list, AudioVerdict]], name: str) -> tuple[list, AudioVerdict] | None:
        return known.get(self.key(name))

    def load(self) -> dict[str, tuple[list, AudioVerdict]]:
        known: dict[str, tuple[list, AudioVerdict]] = {}
        if not self.path.is_file():
            return known
        with open(self.path, "rb") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    moments = entry["moments"]
                    verdict = AudioVerdict(entry["digest"], entry["problem"], entry["seconds"],
                                           None if moments is None else Moments(**moments))
                    known[entry["path"]] = (entry["stamp"], verdict)
                except (ValueError, KeyError, TypeError):
                    continue  # torn by a kill, or from another version: that file is checked again
        return known

    def append(self, lines: list[str]) -> None:
        """Append ``lines`` in one ``O_APPEND`` write, so that the workers' chunks never interleave
        within a line (on file systems that do not promise it, a torn line is only checked again)."""
        data = "".join(lines).encode()
        if not data:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    def sync(self) -> None:
        """Force the appended lines to disk."""
        if self.path.is_file():
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def line(self, path: str, stamp: list, verdict: AudioVerdict) -> str:
        return json.dumps({"path": self.key(path), "stamp": stamp, **asdict(verdict)}) + "\n"


class Progress:
    """Files done out of a total: a bar on a terminal, else a log line at least every ``every_s`` seconds."""

    def __init__(self, total: int, what: str, every_s: float = PROGRESS_EVERY_S):
        self.total, self.what, self.every_s = total, what, every_s
        self.done, self.started = 0, time.monotonic()
        self._said = self.started
        self._bar = None if quiet_progress() else tqdm(total=total, desc=what, unit="file")

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._said >= self.every_s:
            self._said = now
            log.info("%s", self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        return (f"{self.what}: {self.done}/{self.total} files ({rate:.0f} files/s), about "
                f"{_duration(left)} left")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "? s"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def audit(
    paths: Iterable[str | os.PathLike[str]], reading: Reading, cache: VerdictCache, processes: int = 1,
    what: str = "audio check", should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, AudioVerdict]:
    """A verdict per file of ``paths``, reusing ``cache`` for files unchanged since (size and mtime), the
    others checked by up to ``processes`` processes (this one and a helper per :data:`FILES_PER_HELPER`
    files, at most ``processes - 1``), each verdict cached as it comes.
    ``should_stop`` (a preemption) is asked after every chunk of files: True raises :class:`AuditStopped`."""
    store = cache
    known = store.load()
    names = list(dict.fromkeys(str(p) for p in paths))
    verdicts: dict[str, AudioVerdict] = {}
    todo: list[str] = []
    for name in names:
        entry = store.lookup(known, name)
        try:
            fresh = entry is not None and entry[0] == file_stamp(Path(name), reading)
        except OSError:
            fresh = False
        if fresh:
            verdicts[name] = entry[1]
        else:
            todo.append(name)
    if not todo:
        return verdicts
    processes = max(1, min(processes, 1 + len(todo) // FILES_PER_HELPER))
    log.info("%s: %d file(s) to check (%d known from %s) with %d process(es)", what, len(todo), len(names) - len(todo),
             store.path, processes)
    progress = Progress(len(todo), what)
    store.path.parent.mkdir(parents=True, exist_ok=True)
    for chunk, results in _checked(todo, reading, store, processes):
        for name, (digest, problem, seconds, moments) in zip(chunk, results, strict=True):
            verdicts[name] = AudioVerdict(digest, problem, seconds, None if moments is None else Moments(*moments))
        progress.update(len(results))  # the worker has appended their lines: a killed check keeps them
        if should_stop():
            progress.close()
            raise AuditStopped(f"{what} stopped on request after {progress.done} of {len(todo)} files; the "
                               f"verdicts so far are in {store.path}")
    store.sync()
    progress.close()
    log.info("%s", progress.line().replace(", about 0 s left", ""))
    return {name: verdicts[name] for name in names}


def _checked(todo: Sequence[str], reading: Reading, cache: VerdictCache, processes: int):
    """(chunk of paths, :func:`_check_chunk`'s tuples for it), in whatever order they finish.

    ``processes`` processes check files: this one and ``processes - 1`` helpers. This process takes a
    chunk itself whenever the helpers hold enough, so that its own bookkeeping (the verdicts, the
    progress) runs between its chunks instead of taking a core from a worker: on two cores, two
    worker processes and a parent gathering 134,000 results came to 1.7x one process."""
    chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
    tasks = deque((index, list(chunk), reading, cache) for index, chunk in enumerate(chunks))
    if processes <= 1:
        for index, results in map(_check_chunk, tasks):
            yield chunks[index], results
        return
    helpers = processes - 1
    # spawn, not fork: the parent may hold threads (logging, tqdm) that a forked child would inherit mid-lock
    with ProcessPoolExecutor(helpers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running: set[Future] = set()
        while tasks or running:
            while tasks and len(running) < _IN_FLIGHT_PER_HELPER * helpers:
                running.add(pool.submit(_check_chunk, tasks.popleft()))
            finished = {future for future in running if future.done()}
            running -= finished
            for future in finished:
                index, results = future.result()
                yield chunks[index], results
            if tasks:
                index, results = _check_chunk(tasks.popleft())
                yield chunks[index], results
            elif running and not finished:
                wait(running, return_when=FIRST_COMPLETED)


def fingerprint(splits: dict[str, list[Utterance]], verdicts: dict[str, AudioVerdict]) -> str:
    """A 16-hex content hash of the corpus: every utterance's split, labels and audio bytes.

    Example:
        >>> fingerprint({}, {})
        '44136fa355b3678a'
    """
    digest = hashlib.sha256()
    for split in sorted(splits):
        for utt in splits[split]:
            line = [split, os.path.basename(utt.path), *utt.labels, verdicts[str(utt.path)].digest]
            digest.update(json.dumps(line).encode())
    return digest.hexdigest()[:16]
