"""Checks on user-given values and paths, made before any work starts, each failing with one line that names
the problem and the fix.

* :func:`finite` / :func:`integer` — a number in a range (NaN and infinities refused), as plain functions and
  as argparse ``type=`` factories (:func:`finite_arg`, :func:`int_arg`);
* :func:`parse_int_ranges` — ``'0-3,7'`` style lists, refusing descending and oversized ranges *before*
  building the list;
* :func:`check_output_path` — an output path that is a file name with the right extension in a writable
  folder, and is none of the inputs (nor inside their intermediates);
* :func:`renamed_kwargs` — a keyword argument's old name still accepted (one name per idea, old calls keep working).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from .errors import V2SError

#: Largest number of seeds one ``generate`` call accepts (a grid of this many images is already huge).
MAX_SEEDS = 4096


class OutputPathError(V2SError, ValueError):
    """An output path that must not (or cannot) be written: an input, a folder, a read-only place."""


def finite(value, name: str, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a float, refusing non-numbers, NaN, +-inf and values outside ``[lo, hi]``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (lo is not None and f < lo) or (hi is not None and f > hi):
        raise ValueError(f"{name} = {f:g} is out of range [{_fmt(lo)}, {_fmt(hi, 'inf')}]")
    return f


def integer(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int (a float with a fraction is refused), within ``[lo, hi]``."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
    f = finite(value, name)
    if f != int(f):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    i = int(f)
    if (lo is not None and i < lo) or (hi is not None and i > hi):
        raise ValueError(f"{name} = {i} is out of range [{_fmt(lo)}, {_fmt(hi, 'inf')}]")
    return i


def smoothing_kernel(value, name: str, lo: int = 0, hi: int = 1001) -> int:
    """``value`` as a track-smoothing kernel in frames: 0 (off) or an odd integer from 3, at most ``hi``."""
    k = integer(value, name, lo, hi)
    if k != 0 and (k < 3 or k % 2 == 0):
        raise ValueError(f"{name} = {k}: a smoothing kernel is a centred window of frames, an odd number >= 3 "
                         "(or 0 for no smoothing); e.g. 3 or 5")
    return k


def _fmt(x, end: str = "-inf") -> str:
    """A range end for messages; None is unbounded (``end``: "-inf" below, "inf" above)."""
    return end if x is None else f"{x:g}"


def _argparse_type(check, label: str, name: str, lo, hi):
    """argparse ``type=`` calling ``check(text, name, lo, hi)``; its ValueError becomes argparse's one-line error."""
    def parse(text):
        try:
            return check(text, name, lo, hi)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = label  # argparse names the expected kind by the function's name
    return parse


def finite_arg(name: str, lo: float | None = None, hi: float | None = None):
    """argparse ``type=`` for a finite float in ``[lo, hi]``."""
    return _argparse_type(finite, "number", name, lo, hi)


def int_arg(name: str, lo: int | None = None, hi: int | None = None):
    """argparse ``type=`` for an int in ``[lo, hi]``."""
    return _argparse_type(integer, "integer", name, lo, hi)


def power_of_two(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """An int in ``[lo, hi]`` that is a power of two (a generator's resolution)."""
    i = integer(value, name, lo, hi)
    if i & (i - 1):
        raise ValueError(f"{name} must be a power of two (e.g. {1 << (i.bit_length() - 1)} or {1 << i.bit_length()}), "
                         f"got {i}")
    return i


def power_of_two_arg(name: str, lo: int | None = None, hi: int | None = None):
    """argparse ``type=`` for :func:`power_of_two`."""
    return _argparse_type(power_of_two, "resolution", name, lo, hi)


def smoothing_kernel_arg(name: str, hi: int = 1001):
    """argparse ``type=`` for :func:`smoothing_kernel`."""
    return _argparse_type(smoothing_kernel, "kernel", name, 0, hi)


def parse_int_ranges(text: str, name: str, *, lo: int | None = None, hi: int | None = None,
                     max_count: int | None = None) -> list[int]:
    """``'0-3,7,10-11'`` -> ``[0, 1, 2, 3, 7, 10, 11]`` (order kept, no deduplication).

    Each value must lie in ``[lo, hi]`` and the list may hold at most ``max_count`` values; both are checked
    on the range bounds before any list is built, so ``'0-100000000'`` fails at once.
    """
    out: list[int] = []
    count = 0
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                i = part.index("-", 1)
                a, b = int(part[:i]), int(part[i + 1:])
            else:
                a = b = int(part)
        except ValueError:
            raise ValueError(f"bad {name} {part!r} in {text!r}: use e.g. '0-7' or '1,5,9'") from None
        if b < a:
            raise ValueError(f"bad {name} range {part!r}: use 'a-b' with a <= b")
        if (lo is not None and a < lo) or (hi is not None and b > hi):
            raise ValueError(f"{name} {part!r} is out of range: allowed are {_fmt(lo)}..{_fmt(hi, 'inf')}")
        count += b - a + 1
        if max_count is not None and count > max_count:
            raise ValueError(f"too many {name}s in {text!r} ({count} or more; at most {max_count})")
        out.extend(range(a, b + 1))
    if not out:
        raise ValueError(f"no {name}s given in {text!r}")
    return out


def renamed_kwargs(**old_to_new: str):
    """Decorator: accept the keyword ``old`` as ``new`` (``@renamed_kwargs(batch="batch_size")``), with a
    ``DeprecationWarning``; giving both names is a ``TypeError``."""
    def deco(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{func.__name__}() got both {new}= and its old name {old}=; give {new}=")
                    warnings.warn(f"{func.__name__}({old}=...) is now called {new}=...", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)
        return wrapper
    return deco


def _resolved(p) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(p)))).resolve()


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def check_output_path(out, *, suffixes: Sequence[str], inputs: Iterable = (), intermediates: str | None = None,
                      what: str = "output") -> Path:
    """Check an output file path before any work: returns it as a :class:`Path`.

    Refused (:class:`OutputPathError`, one line): an extension not in ``suffixes``; an existing folder; a
    path that resolves to one of ``inputs`` (the same file, also through links) or lies inside an input's
    intermediates folder ``<input><intermediates>``; an input inside the output's own intermediates
    ``<out><intermediates>``; a folder (or nearest existing parent folder) that cannot be written.
    """
    if not os.fspath(out).strip():
        raise OutputPathError(f"{what} is empty; give a file name ending in {suffixes[0]}")
    path = Path(os.path.expanduser(os.fspath(out)))
    if str(out).endswith(("/", os.sep)) or path.is_dir():
        raise OutputPathError(f"{what} {out} is a folder; give a file name ending in {suffixes[0]}")
    if path.suffix.lower() not in [s.lower() for s in suffixes]:
        raise OutputPathError(f"{what} {out} has the wrong extension; give a file name ending in "
                              f"{' / '.join(suffixes)}")
    rp = _resolved(path)
    for src in inputs:
        if src is None:
            continue
        rs = _resolved(src)
        same = rs == rp
        if not same and path.exists() and Path(src).exists():
            try:
                same = os.path.samefile(path, src)
            except OSError:
                pass
        if same:
            raise OutputPathError(f"{what} {out} is the input file {src}: writing it would destroy the input; "
                                  f"choose another {what}")
        if intermediates:
            if _inside(rp, _resolved(str(src) + intermediates)):
                raise OutputPathError(f"{what} {out} lies inside the intermediates of {src}; choose another {what}")
            if _inside(rs, _resolved(str(path) + intermediates)):
                raise OutputPathError(f"input {src} lies inside the intermediates folder of {what} {out}, which "
                                      f"the run writes; move the input or choose another {what}")
    if intermediates and Path(str(path) + intermediates).exists() and not Path(str(path) + intermediates).is_dir():
        raise OutputPathError(f"{what} {out} keeps its intermediates in the folder {path}{intermediates}, but that is "
                              f"a file; move it or choose another {what}")
    folder = rp.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"cannot create the folder of {what} {out}: {folder} is a file")
    if not _can_create_in(folder):
        raise OutputPathError(f"cannot write {what} {out}: folder {folder} is not writable; choose another "
                              f"{what}")
    return path


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried for real: ``os.access`` is wrong for root and for
    read-only mounts)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".v2s-write-test-")
    except OSError:
        return False
    os.close(fd)
    os.remove(name)
    return True
