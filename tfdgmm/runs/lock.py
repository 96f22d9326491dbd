"""The exclusive lock of a run directory: one process writes a run at a time.

`RunLock(run_dir)` creates `run_dir/.lock` with `O_CREAT | O_EXCL` (atomic on local file
systems) holding the owner's PID, host and command. A second process is refused with
`RunLockedError`, one line naming the owner. A lock left by a process that died (same host,
PID no longer running) is stale: it is taken over, and the takeover is reported. A lock of
another host is never taken over automatically (its PID means nothing here): the message says
which file to delete once that process is known to be gone.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

from tfdgmm import layout

if TYPE_CHECKING:
    from typing import Any

    from tfdgmm.types import Log, PathLike

__all__ = ["RunLock", "RunLockedError", "read_lock"]

#: A lock file that cannot be parsed (its owner died between creating and writing it) is
#: treated as stale after this many seconds.
UNREADABLE_GRACE_SECONDS = 10.0


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock."""


def read_lock(run_dir: PathLike) -> dict | None:
    """The owner record of `run_dir`'s lock (dict), `{}` when unreadable, None when absent."""
    path = layout.path(run_dir, layout.LOCK)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
        return owner if isinstance(owner, dict) else {}
    except ValueError:
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, ValueError, TypeError, OverflowError):
        return False
    return True


class RunLock:
    """`with RunLock(run_dir, what='train'):` ... (or `acquire()` / `release()`).

    `log`: where a stale-lock takeover is reported."""

    def __init__(self, run_dir: PathLike, what: str = "train", log: Log = print) -> None:
        self.run_dir = os.fspath(run_dir)
        self.path = layout.path(self.run_dir, layout.LOCK)
        self.what = what
        self.log = log
        self._record = None

    @property
    def held(self) -> bool:
        return self._record is not None

    def _owner_text(self, owner: dict) -> str:
        if not owner:
            return "an unknown process (the lock file is unreadable)"
        return (
            f"PID {owner.get('pid')} on {owner.get('host')} ({owner.get('what', '?')}, "
            f"since {owner.get('started', '?')})"
        )

    def _is_stale(self, owner: dict) -> bool:
        if owner is None:
            return False  # gone meanwhile: just retry
        if not owner:
            try:
                age = time.time() - os.path.getmtime(self.path)
            except OSError:
                return False
            return age > UNREADABLE_GRACE_SECONDS
        if owner.get("host") != socket.gethostname():
            return False
        return not _pid_alive(owner.get("pid"))

    def acquire(self) -> RunLock:
        if self.held:
            raise RuntimeError(f"{self.path}: already held by this RunLock")
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "what": self.what,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = read_lock(self.run_dir)
                if self._is_stale(owner):
                    self.log(
                        f"{self.run_dir}: taking over the stale lock of "
                        f"{self._owner_text(owner)}: that process is gone"
                    )
                    self._remove_if(owner)
                    continue
                if owner is None:
                    continue
                hint = (
                    ""
                    if owner and owner.get("host") == socket.gethostname()
                    else f"; if that process is gone, delete {self.path}"
                )
                raise RunLockedError(
                    f"{self.run_dir} is in use by {self._owner_text(owner)}{hint}"
                ) from None
            except OSError as err:
                raise OSError(
                    err.errno, f"cannot write to the run directory {self.run_dir}: {err.strerror}"
                ) from err
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(record, f)
            except OSError:
                self._unlink()
                raise
            self._record = record
            return self
        raise RunLockedError(f"{self.run_dir}: could not take the lock {self.path}")

    def _remove_if(self, owner: dict) -> None:
        """Remove the lock file if it still holds `owner` (stale takeover)."""
        if read_lock(self.run_dir) == owner:
            self._unlink()

    def _unlink(self) -> None:
        try:
            os.unlink(self.path)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise

    def release(self) -> None:
        if not self.held:
            return
        if read_lock(self.run_dir) == self._record:  # never remove another owner's lock
            self._unlink()
        self._record = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> bool:
        self.release()
        return False
