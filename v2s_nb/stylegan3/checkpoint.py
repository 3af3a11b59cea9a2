"""v2s_nb's own generator format: one ``.safetensors`` file.

The tensors are the generator's ``state_dict()`` (NVIDIA's names, e.g. ``synthesis.L0_36_1024.weight``). The
safetensors metadata holds:

* ``format``: ``"v2s_nb.stylegan3"``; ``format_version``: ``"1"``;
* ``config``: JSON of the constructor arguments (``z_dim``, ``c_dim``, ``w_dim``, ``img_resolution``,
  ``img_channels``, ``mapping_kwargs``, synthesis and layer arguments);
* ``is_random``: ``"true"`` for random-weight generators; ``source``: where the weights came from.

Loading it executes nothing: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_path
from .networks import Generator
from .snapshot import SnapshotError

FORMAT = "v2s_nb.stylegan3"
FORMAT_VERSION = "1"


def save_generator(G: Generator, path) -> Path:
    """Write ``G`` to ``path`` (``.safetensors``) atomically: a temporary file is renamed into place."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in G.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(G.init_kwargs),
            "is_random": "true" if G.is_random else "false", "source": str(G.source or "")}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def is_v2s_checkpoint(path) -> bool:
    with open(path, "rb") as f:
        head = f.read(10)
    if len(head) < 10:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len < 100_000_000 and head[8:9] == b"{"


def load_checkpoint(path) -> Generator:
    """Read a generator written by :func:`save_generator`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise SnapshotError(f"{path} is a safetensors file but not a v2s_nb generator "
                                    f"(metadata format={meta.get('format')!r}).")
            if meta.get("format_version") != FORMAT_VERSION:
                raise SnapshotError(f"{path}: unsupported v2s_nb generator format version {meta.get('format_version')!r}.")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SnapshotError:
        raise
    except Exception as e:
        raise SnapshotError(f"{path} could not be read as a safetensors file ({e}); truncated or corrupt?") from None
    G = Generator(**json.loads(meta["config"]))
    result = G.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SnapshotError(f"{path}: tensors do not match the stored config (missing {result.missing_keys[:3]}, "
                            f"unexpected {result.unexpected_keys[:3]}).")
    G.is_random = meta.get("is_random") == "true"
    G.source = meta.get("source") or str(path)
    return G.eval().requires_grad_(False)
