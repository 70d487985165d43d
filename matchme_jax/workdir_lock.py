"""One run per workdir: W/run.lock, held from the start of a run to its end.

Two runs in one workdir would write the same checkpoints, pseudo labels and results; the second
is refused at once, naming the holder. The lock file is JSON:

    {"host": "node-3", "pid": 4242, "since": "2026-12-04T10:00:00+01:00",
     "pid_start": "8812345", "token": "<uuid4 hex>", "command": "run.py --config=..."}

A run killed with SIGKILL leaves its lock behind. On the same host such a stale lock is taken
over (its pid is not alive, or is alive but started at another time: a reused pid). A lock of
another host cannot be checked from here; it is refused with how to remove it.
"""

import contextlib
import datetime
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from absl import logging

from matchme_jax import errors

LOCK_FILE = "run.lock"
# A lock file is created empty, then written: a reader waits this long for its content.
_UNREADABLE_WAIT_S = 2.0


class WorkdirBusyError(errors.UserError):
    """Another run holds the workdir's lock."""


def _host() -> str:
    return socket.gethostname()


def _process_start(pid: int) -> str | None:
    """When `pid` started (ticks since boot, /proc/<pid>/stat field 22); None where unknown.

    Tells a live process from a later one that reuses the pid of a killed run.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return stat[stat.rindex(")") + 2 :].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def is_stale(holder: dict) -> bool:
    """Whether the run that wrote `holder` (a lock's content) is certainly gone.

    Only on the host that wrote it: a pid of another host says nothing here.
    """
    if holder.get("host") != _host():
        return False
    pid = int(holder["pid"])
    if not _pid_alive(pid):
        return True
    started = holder.get("pid_start")
    now = _process_start(pid)
    return started is not None and now is not None and started != now


def describe(holder: dict) -> str:
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, running since "
        f"{holder.get('since')} ({holder.get('command') or 'command unknown'})"
    )


class WorkdirLock:
    """The lock of one workdir; `acquire` takes it or raises WorkdirBusyError."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self._token: str | None = None

    def acquire(self) -> None:
        """Creates the lock file, taking over a stale one; raises WorkdirBusyError if held."""
        record = {
            "host": _host(),
            "pid": os.getpid(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "pid_start": _process_start(os.getpid()),
            "token": uuid.uuid4().hex,
            "command": " ".join(sys.argv),
        }
        unreadable_since = None
        while True:
            try:
                # Atomic: of two processes creating it at once, exactly one succeeds.
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, text = self._read()
                if text is None:  # removed meanwhile: try again
                    continue
                if holder is None:  # just created, not written yet; or left broken
                    unreadable_since = unreadable_since or time.monotonic()
                    if time.monotonic() - unreadable_since > _UNREADABLE_WAIT_S:
                        raise WorkdirBusyError(
                            f"The lock file {self.path} is unreadable. If no run uses the workdir "
                            f"{self.workdir}, delete that file and start again."
                        ) from None
                    time.sleep(0.05)
                    continue
                if not is_stale(holder):
                    raise WorkdirBusyError(self._busy_message(holder)) from None
                self._remove_stale(holder, text)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            self._token = record["token"]
            return

    def release(self) -> None:
        """Removes the lock file if it is still this lock's own."""
        if self._token is None:
            return
        holder, _ = self._read()
        if holder is not None and holder.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._token = None

    def _read(self) -> tuple[dict | None, str | None]:
        """(the lock's content or None when unparsable, its text or None when there is none)."""
        try:
            text = self.path.read_bytes().decode(errors="replace")  # garbage too
        except FileNotFoundError:
            return None, None
        try:
            holder = json.loads(text)
            holder["pid"] = int(holder["pid"])
        except (ValueError, KeyError, TypeError):
            holder = None
        return holder, text

    def _remove_stale(self, holder: dict, text: str) -> None:
        """Removes the stale lock whose file holds `text`, and nothing else.

        Two processes may both find the same stale lock; the first may already have replaced it
        with its own when the second comes to remove it. So the lock is first renamed aside (one
        atomic step) and removed only if the renamed file is the stale one (the same text: each
        lock has a token of its own; an inode number is no proof, the new file may reuse it);
        otherwise it is put back.
        """
        aside = self.path.with_name(f"{LOCK_FILE}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another process removed it first
            return
        if aside.read_bytes().decode(errors="replace") == text:
            aside.unlink()
            logging.warning(
                "Took over the lock %s of a run that is gone: %s.", self.path, describe(holder)
            )
            return
        try:
            os.link(aside, self.path)  # fails, rather than overwrite, if a lock was made since
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not self.path.exists():
                os.rename(aside, self.path)
                return
        aside.unlink()

    def _busy_message(self, holder: dict) -> str:
        message = (
            f"The workdir {self.workdir} is in use by another run: {describe(holder)}; lock file "
            f"{self.path}. Two runs in one workdir would overwrite each other's checkpoints. "
            "Wait for that run to end (or stop it), or use another --workdir."
        )
        if holder.get("host") != _host():
            message += (
                f" This host cannot tell whether pid {holder.get('pid')} on "
                f"{holder.get('host')} still runs: if you are sure it does not, delete "
                f"{self.path} and start again."
            )
        return message


@contextlib.contextmanager
def held(workdir: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Holds the lock of `workdir` for the `with` block; `enabled=False` does nothing.

    Raises WorkdirBusyError on entry when another run holds it. Released on any exit, an
    exception included; a killed run leaves it behind as a stale lock for the next run to take.
    """
    if not enabled:
        yield
        return
    lock = WorkdirLock(workdir)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
