"""Files written whole or not at all: readers (other ranks, a resumed run, a rerun) see the old
file or the complete new one, never a part, even if the writer is killed mid-write."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file beside ``path``; on success flush it to disk and rename it into place.

    The temporary is locked (``flock``) from creation to rename, so that :func:`_remove_left_over`, run by
    every successful write, removes only what killed writers left, never another live writer's file
    (two ranks writing one datalist)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = _locked_temporary(path)
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"newline": ""})) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
            os.replace(tmp, path)  # still open and locked: no cleaner can take it before the rename
        _remove_left_over(path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _locked_temporary(path: Path) -> tuple[int, str]:
    while True:
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        if fcntl is None:
            return handle, tmp
        fcntl.flock(handle, fcntl.LOCK_EX)
        if os.fstat(handle).st_nlink:
            return handle, tmp
        os.close(handle)  # a cleaner removed it between its creation and the lock: take another name


def _remove_left_over(path: Path) -> None:
    """Delete the temporaries of earlier writes of ``path`` killed before their rename (SIGKILL, power
    loss): the file itself is whole, they are only debris beside it. A temporary whose lock is held
    belongs to a live writer and stays."""
    if fcntl is None:  # no flock (Windows): live and dead temporaries cannot be told apart
        return
    for left in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            with open(left, "rb") as stream:
                fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                left.unlink(missing_ok=True)
        except (BlockingIOError, FileNotFoundError):
            continue


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path) as stream:
        stream.write(text)
    return Path(path)
