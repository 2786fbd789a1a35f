"""One writer per work directory: an exclusive lock that a second launch reports in one line, naming its holder.

The lock is `WORKDIR/run.lock`, held with `fcntl.flock` for the life of the run (process 0 of a multi-host run)
and naming its holder (host, pid, start time) in JSON. The kernel releases a flock when its process dies, however
it dies, so a lock file left by a killed run is stale by construction: the next launch takes it and says whose it
was. A clean exit empties the file.

flock is local to one machine's kernel (and NFS only where the mount supports it). A bucket work directory
(`gs://`) has neither: there the same protocol is an object created with a "does not exist yet" precondition
(`ifGenerationMatch=0`), holding the same JSON plus a heartbeat time the holder rewrites every minute, and a lock
whose heartbeat is older than a few minutes is stale; deleting it on a clean exit releases it.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Any, Callable

from hrrl_jax.errors import UserError

LOCK_FILE = "run.lock"


class WorkDirInUseError(UserError, RuntimeError):
    """Another live process holds the work directory's lock."""


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"


class WorkDirLock:
    """An exclusive, non-blocking lock on a work directory; a context manager.

    `acquire` raises WorkDirInUseError naming the holder when another live process holds it, and reports (through
    `report`) a stale lock that it takes over.
    """

    def __init__(self, directory: str, *, report: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
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
            raise WorkDirInUseError(
                f"{os.path.dirname(self.path)} is in use by {_describe(holder)}, which holds {self.path}. "
                "Wait for that run to end (or stop it), or give this one another --workdir."
            ) from None
        previous = _read_holder(file)
        if previous:
            self._report(f"Took over the stale lock {self.path} of {_describe(previous)}, which is no longer running.")
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
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
