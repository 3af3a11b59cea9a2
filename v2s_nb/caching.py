"""The one cache layer: how results are keyed, named, found and given up on.

* **Keys**: :func:`json_key` (SHA-256 of the canonical JSON of a dict of settings), :func:`generator_hash` (SHA-256
  of a generator's state dict; the same weights always give the same digest, wherever it is asked for) and
  :func:`sha256_file` (a file's bytes).
* **Names**: ``<folder>/<kind>-<key>.<ext>`` (:func:`entry_path`), the key cut to :data:`KEY_CHARS` hex digits;
  ``kind`` says what the entry holds (``inv``, ``seq``, ``enc``, ``channels``, ``regressor``, ``faces-video``,
  ``pose-driving``, ``pti``, ``fitted``).
* **Folders**: :func:`default_dir` = ``v2s_nb.weights.cache_dir() / <area>`` (``$V2S_NB_CACHE``, default
  ``~/.cache/v2s_nb``); a function's ``cache`` / ``cache_dir`` argument takes True (that folder), a folder, or
  False / None (off).
* **Unusable entries** (truncated, altered, from other settings): :func:`warn_unusable` says which file and why
  (:class:`v2s_nb.errors.CacheWarning`), and the result is recomputed and written again. Never an error, never
  silent.
* **Writes** go through :mod:`v2s_nb.atomic`, so an entry under its final name is always complete.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

from .errors import CacheWarning
from .weights import sha256_file

__all__ = ["KEY_CHARS", "default_dir", "entry_path", "generator_hash", "hash_tensor", "json_key", "sha256_file", "warn_unusable"]

#: Hex digits of a key kept in a cache file name (96 bits: collisions are not a concern).
KEY_CHARS = 24


def json_key(obj) -> str:
    """SHA-256 (64 hex digits) of ``obj`` as JSON with sorted keys. Values JSON cannot hold: numpy arrays and torch
    tensors are taken by their dtype, shape and bytes (``str`` abbreviates large arrays and rounds floats, so
    different arrays would share a key); anything else as ``str``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def _json_default(x):
    """``json.dumps``'s stand-in for a value JSON cannot hold (see :func:`json_key`)."""
    import numpy as np

    torch = sys.modules.get("torch")  # not imported: x cannot be a tensor
    if torch is not None and isinstance(x, torch.Tensor):
        h = hashlib.sha256()
        hash_tensor(h, x)
        return f"tensor sha256:{h.hexdigest()}"
    if isinstance(x, np.ndarray):
        if x.dtype.hasobject:  # its bytes are pointers: take the items
            return x.tolist()
        h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
        return f"ndarray sha256:{h.hexdigest()}"
    return str(x)


def hash_tensor(h, t) -> None:
    """Feed a tensor's dtype, shape and bytes (on the CPU, contiguous) into the hashlib object ``h``."""
    import torch

    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def generator_hash(G) -> str:
    """SHA-256 (hex) over a module's state dict: names, dtypes, shapes and values, in key order.

    Computed anew on every call (a fraction of a second for a 1024 px generator): a memo keyed by the tensors'
    storage and version counters would miss changes that PyTorch doesn't count (edits through ``.data``, fused
    optimiser steps), and a stale digest would hand back results made with other weights. The digest does not
    depend on the device or on how the module was loaded.
    """
    h = hashlib.sha256()
    for k, v in G.state_dict().items():
        h.update(k.encode())
        hash_tensor(h, v)
    return h.hexdigest()


def default_dir(area: str) -> Path:
    """``v2s_nb.weights.cache_dir() / area`` (not created here)."""
    from .weights import cache_dir

    return cache_dir() / area


def entry_path(folder, kind: str, key: str, suffix: str = "") -> Path:
    """``<folder>/<kind>-<key[:KEY_CHARS]><suffix>``."""
    return Path(folder).expanduser() / f"{kind}-{key[:KEY_CHARS]}{suffix}"


def warn_unusable(path, why: str, stacklevel: int = 3) -> None:
    """The one message for a cache entry that cannot be used: it names the file and why, and says it is redone."""
    warnings.warn(f"cached intermediate {path}: {why}; recomputing it", CacheWarning, stacklevel=stacklevel)
