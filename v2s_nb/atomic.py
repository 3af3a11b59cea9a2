"""Writing files so that a half-written file never stands under its final name.

Everything v2s_nb saves (images, checkpoints, inversions, re-enactment state, caches) goes to a temporary file
beside the target and is renamed into place only once complete; an interrupted run leaves the old file (or
none), never a truncated one that a later run would take as finished.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


#: A temporary beside a target untouched this long (seconds) is a killed process's leftover (SIGKILL, a runtime
#: reset: no ``finally`` ran) and is removed by the next write of that target. Writers that stream (ffmpeg) touch
#: theirs continuously, so only a dead writer's temporary gets this old.
STALE_TEMPORARY_S = 3600.0


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".part"):
    """Yield a temporary path beside ``path``; renamed onto ``path`` when the block succeeds, removed otherwise.

    ``suffix`` matters to writers that pick a format from the extension (PIL, ffmpeg). The temporary's bytes are
    flushed to disk before the rename (else a power cut soon after can leave an empty file under the final name),
    and temporaries of ``path`` that a killed process left (older than :data:`STALE_TEMPORARY_S`) are removed. An
    existing folder at ``path`` (``IsADirectoryError``) or a file in place of one of its folders
    (``NotADirectoryError``) is refused before the block runs.
    """
    path = Path(path)
    _check_target(path, suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as e:  # named the hidden temporary, a file the user never asked for
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise type(e)(e.errno, f"can't write '{path.name}' in '{path.parent}' ({os.strerror(e.errno)}): choose a "
                               "folder you can write to") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; a saved result gets the usual permissions
    try:
        yield Path(tmp)
        _sync(tmp)
        os.replace(tmp, path)
        _sync(path.parent)  # the rename itself
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _check_target(path: Path, suffix: str) -> None:
    """Refuse a folder at ``path`` or a file where one of its folders should be, before anything is written (the
    rename would fail late, naming the hidden temporary, or mkdir would say only "File exists")."""
    if path.is_dir():
        ext = suffix[len(".part"):] if suffix.startswith(".part") else suffix
        example = f" such as '{path / ('output' + ext)}'" if ext else ""
        raise IsADirectoryError(f"'{path}' is a folder; give a file name{example}.")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write '{path}': '{folder}' is a file, not a folder; choose another path.")


def _sync(path) -> None:
    """fsync a file or folder; a file system that can't (some network mounts, folders on Windows) is let be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    import glob
    import time

    for p in path.parent.glob(glob.escape(f".{path.name}.") + "*"):
        try:
            if p.is_file() and time.time() - p.stat().st_mtime > STALE_TEMPORARY_S:
                p.unlink()
        except OSError:  # gone meanwhile, or not ours to remove
            pass


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
    """Open a temporary file in ``mode``, call ``write(f)``, and move it onto ``path`` (flushed to disk first)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            write(f)
    return Path(path)


@contextlib.contextmanager
def write_together(targets: dict):
    """Temporary paths {name: Path} beside ``targets`` {name: Path} (hidden, same suffixes), moved onto them
    together when the block succeeds, so a set of outputs is always one run's.

    Until the block ends the targets are untouched: an error or Ctrl-C inside it removes the temporaries and
    leaves the previous run's files as they were. At the end the previous files are removed and the new ones
    moved in with Ctrl-C held back (delivered after); a move failing part-way leaves files missing, never a mix
    of two runs."""
    targets = {k: Path(v) for k, v in targets.items()}
    with contextlib.ExitStack() as stack:
        tmps = {k: stack.enter_context(atomic_path(p, suffix=".part" + p.suffix)) for k, p in targets.items()}
        yield tmps
        with _ctrl_c_held():
            for p in targets.values():
                p.unlink(missing_ok=True)
            stack.close()  # each atomic_path renames its temporary onto its target


@contextlib.contextmanager
def _ctrl_c_held():
    """SIGINT held back during the block and raised after it (main thread only: elsewhere none arrives)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # (None: a handler installed outside Python, which could not be put back)
        return
    got = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if got:
            signal.raise_signal(signal.SIGINT)
