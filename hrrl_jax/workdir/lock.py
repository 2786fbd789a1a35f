"""One writer per work directory: an exclusive lock that a second launch reports in one line, naming its holder.

The lock is `WORKDIR/run.lock`, held with `fcntl.flock` for the life of the run (process 0 of a multi-host run)
and naming its holder (host, pid, start time) in JSON. The kernel releases a flock when its process dies, however
it dies, so a lock file left by a killed run is stale by construction: the next launch takes it and says whose it
was. A clean exit empties the file.

flock is local to one machine's kernel (and NFS only where the mount supports it). An object store work directory
(`gs://`) has no lock at all, so there `ObjectStoreLock` keeps the same protocol with what a bucket offers: the
object `run.lock` holds the same JSON plus a random token and a heartbeat time, which the holder rewrites every
HEARTBEAT_SECONDS from a background thread; a lock whose heartbeat is older than STALE_AFTER_SECONDS is stale (its
holder died without deleting it) and is taken over with a message; a clean exit deletes it. What is checked is
weaker than flock: a launch writes its token when it finds no live holder, waits SETTLE_SECONDS and reads the
object back; if another launch's token is there, the later writer keeps the lock and the other refuses. Two
launches are both let through only if both found no holder and their writes landed more than SETTLE_SECONDS apart
(a check and a write separated by that long a stall). A create-if-absent precondition would close that gap; the
fsspec interface that epath uses has none.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from hrrl_jax.errors import UserError
from hrrl_jax.workdir import storage

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 60.0
STALE_AFTER_SECONDS = 300.0
SETTLE_SECONDS = 2.0


class WorkDirInUseError(UserError, RuntimeError):
    """Another live process holds the work directory's lock."""


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}


def _in_use(directory: Any, lock: Any, holder: dict[str, Any]) -> WorkDirInUseError:
    return WorkDirInUseError(
        f"{directory} is in use by {_describe(holder)}, which holds {lock}. "
        "Wait for that run to end (or stop it), or give this one another --workdir."
    )


def workdir_lock(directory: str | os.PathLike, **options: Any) -> WorkDirLock | ObjectStoreLock:
    """The lock of `directory`: a flock on a disk (WorkDirLock), a heartbeat object on an object store."""
    if storage.is_object_store(directory):
        return ObjectStoreLock(directory, **options)
    return WorkDirLock(directory, **options)


class WorkDirLock:
    """An exclusive, non-blocking flock on a local work directory; a context manager.

    `acquire` raises WorkDirInUseError naming the holder when another live process holds it, and reports (through
    `report`) a stale lock that it takes over.
    """

    def __init__(
        self, directory: str | os.PathLike, *, report: Callable[[str], None] = lambda line: print(line, flush=True)
    ) -> None:
        self.path = os.path.join(os.path.abspath(directory), LOCK_FILE)
        self._report = report
        self._file: Any = None

    def acquire(self) -> None:
        try:
            file = open(self.path, "a+")
        except OSError as error:
            raise WorkDirInUseError(f"Cannot open the lock {self.path}: {error.strerror or error}.") from None
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_holder(file)
            file.close()
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise _in_use(os.path.dirname(self.path), self.path, holder) from None
        previous = _read_holder(file)
        if previous:
            self._report(f"Took over the stale lock {self.path} of {_describe(previous)}, which is no longer running.")
        holder = _this_process()
        file.seek(0)
        file.truncate()
        file.write(json.dumps(holder))
        file.flush()
        os.fsync(file.fileno())
        self._file = file

    def release(self) -> None:
        """Empties the lock file (a clean exit leaves no holder behind) and unlocks it."""
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.flush()
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> WorkDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def _read_holder(file: Any) -> dict[str, Any]:
    file.seek(0)
    text = file.read().strip()
    if not text:
        return {}
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "started": f"unreadable lock file: {text[:40]!r}"}
    return holder if isinstance(holder, dict) else {}


class ObjectStoreLock:
    """The lock of an object store work directory: an object with a token and a heartbeat (see the module's doc).

    The same interface and messages as WorkDirLock; `heartbeat_seconds`, `stale_after_seconds` and `settle_seconds`
    default to the module's constants.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        report: Callable[[str], None] = lambda line: print(line, flush=True),
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stale_after_seconds: float = STALE_AFTER_SECONDS,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.directory = storage.as_path(directory)
        self.path = self.directory / LOCK_FILE
        self._report = report
        self._heartbeat_seconds = heartbeat_seconds
        self._stale_after_seconds = stale_after_seconds
        self._settle_seconds = settle_seconds
        self._holder: dict[str, Any] | None = None
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _read(self) -> dict[str, Any]:
        text = storage.read_text_or_none(self.path)
        if not text or not text.strip():
            return {}
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            return {"pid": "?", "host": "?", "started": f"unreadable lock object: {text[:40]!r}"}
        return holder if isinstance(holder, dict) else {}

    def _is_live(self, holder: dict[str, Any]) -> bool:
        return bool(holder) and time.time() - float(holder.get("heartbeat_time", 0.0)) < self._stale_after_seconds

    def _write(self) -> None:
        assert self._holder is not None
        self._holder["heartbeat_time"] = time.time()
        storage.write_text(self.path, json.dumps(self._holder))

    def acquire(self) -> None:
        previous = self._read()
        if self._is_live(previous):
            raise _in_use(self.directory, self.path, previous)
        self._holder = {**_this_process(), "token": uuid.uuid4().hex}
        self._write()
        time.sleep(self._settle_seconds)  # A launch that found no holder at the same moment has written by now.
        found = self._read()
        if found.get("token") != self._holder["token"]:
            self._holder = None
            raise _in_use(self.directory, self.path, found)
        if previous:
            self._report(
                f"Took over the stale lock {self.path} of {_describe(previous)}, whose heartbeat stopped "
                f"{time.time() - float(previous.get('heartbeat_time', 0.0)):.0f} s ago."
            )
        self._stop_heartbeat.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop_heartbeat.wait(self._heartbeat_seconds):
            try:
                self._write()
            except OSError as error:  # A lost connection: the next beat tries again, well before the lock is stale.
                self._report(f"Could not renew the lock {self.path}: {error}.")

    def release(self) -> None:
        """Stops the heartbeat and deletes the lock object if it is still this launch's."""
        if self._holder is None:
            return
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._read().get("token") == self._holder["token"]:
            self.path.unlink()
        self._holder = None

    def __enter__(self) -> ObjectStoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()
