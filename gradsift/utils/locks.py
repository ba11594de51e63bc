"""One writer per folder: a stage holds ``FOLDER/.gradsift.lock`` while it writes there.

The lock is an advisory ``flock`` on that file, so the kernel drops it when its holder dies however it
dies (SIGKILL included): a lock file that nobody holds is stale by definition and is taken over, with a
notice naming the process that left it. The file records who holds it (pid, host, start time, command)
so that a refused writer can say whom it waits for.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from gradsift.utils.errors import GradsiftError
from gradsift.utils.files import remove_partial_writes

LOCK_NAME = ".gradsift.lock"


class FolderLockedError(GradsiftError):
    """Another live process is writing the folder."""


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when} ({holder.get('command', '?')})"


def _read_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    try:
        holder = json.loads(raw) if raw else None
    except ValueError:
        return {"command": "unreadable lock file"}
    return holder if isinstance(holder, dict) else None


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold FOLDER's write lock for the ``with`` block; refuse if a live process holds it."""
    folder = Path(folder)
    for above in (folder, *folder.parents):
        if above.exists() and not above.is_dir():
            raise GradsiftError(f"{above} is a file: an output must be a folder (choose another --output)")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd) or {}
            os.close(fd)
            raise FolderLockedError(f"{folder} is being written by {_describe(holder)}; wait for it to finish or "
                                    "stop it") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fd).st_ino:
            break  # locked the file that is still at PATH (not one its last holder just unlinked)
        os.close(fd)
    try:
        left = _read_holder(fd)
        if left:
            print(f"gradsift: took over the lock of {folder} left by {_describe(left)}, which is no longer running",
                  file=sys.stderr)
        remove_partial_writes(folder)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv and sys.argv[0] else "python"}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.unlink(path)  # while still holding the lock: a waiting writer sees the inode change and retries
        os.close(fd)
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a writer that failed before writing leaves no empty folder behind


@contextmanager
def folder_locks(folders) -> Iterator[None]:
    """Hold the write locks of several folders (in sorted order, so two writers cannot deadlock)."""
    with ExitStack() as stack:
        for folder in sorted({Path(f).resolve() for f in folders}):
            stack.enter_context(folder_lock(folder))
        yield
