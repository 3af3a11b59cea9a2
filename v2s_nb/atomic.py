"""Writing files so that a half-written file never stands under its final name.

Everything v2s_nb saves (images, checkpoints, inversions, re-enactment state, caches) goes to a temporary file
beside the target and is renamed into place only once complete; an interrupted run leaves the old file (or
none), never a truncated one that a later run would take as finished.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable


@contextmanager
def atomic_path(path, suffix: str = ".part"):
    """Yield a temporary path beside ``path``; renamed onto ``path`` when the block succeeds, removed otherwise.

    ``suffix`` matters to writers that pick a format from the extension (PIL, ffmpeg).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; a saved result gets the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process's umask: read from /proc where Linux shows it, else set and restored (which leaves another
    thread creating a file in between with a mask of 0)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Open a temporary file in ``mode``, call ``write(f)``, flush it to disk, and move it onto ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)
