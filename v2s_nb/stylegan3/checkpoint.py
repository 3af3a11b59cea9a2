"""v2s_nb's own generator format: one ``.safetensors`` file.

The tensors are the generator's ``state_dict()`` (NVIDIA's names, e.g. ``synthesis.L0_36_1024.weight``). The
safetensors metadata holds:

* ``format``: ``"v2s_nb.stylegan3"``; ``format_version``: ``"1"``;
* ``config``: JSON of the constructor arguments (``z_dim``, ``c_dim``, ``w_dim``, ``img_resolution``,
  ``img_channels``, ``mapping_kwargs``, synthesis and layer arguments);
* ``is_random``: ``"true"`` for random-weight generators; ``source``: where the weights came from;
* ``tensors_sha256``: :func:`tensors_digest` of the tensors as saved. A file whose tensors do not match it is
  damaged (:class:`SnapshotError`); files saved before it was written have none and load unchecked, except
  where the caller asks for it (``require_digest=True``: the caches, which cannot trust an unverifiable entry).

Metadata is only text: a file whose metadata says ``is_random=false`` gets ``G.weights_verified = True`` and
its source believed only when its tensors match a digest in :data:`PINNED_WEIGHT_DIGESTS`; otherwise
``G.weights_verified`` is False and ``G.source`` (and the repr) say the claim is unverified. Tensors holding
NaN / inf, a config that is not JSON or asks for absurd sizes, and tensors that do not fit the config are
one-line errors (:class:`SnapshotError`).

Loading it executes nothing: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_path
from .networks import Generator
import torch

from .snapshot import SnapshotError, build_checked, check_finite

FORMAT = "v2s_nb.stylegan3"
FORMAT_VERSION = "1"


def save_generator(G: Generator, path) -> Path:
    """Write ``G`` to ``path`` (``.safetensors``) atomically: a temporary file is renamed into place. The
    tensors' digest goes into the metadata (``tensors_sha256``), so a damaged byte is found on loading."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in G.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(G.init_kwargs),
            "is_random": "true" if G.is_random else "false", "source": str(G.source or ""),
            DIGEST_KEY: tensors_digest(tensors)}
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


def load_checkpoint(path, *, require_digest: bool = False) -> Generator:
    """Read a generator written by :func:`save_generator`.

    Tensors that do not match the file's stored digest raise :class:`SnapshotError` (a damaged file). A file
    without a digest (saved by an older v2s_nb, or written by other code) loads unchecked, unless
    ``require_digest``: then it raises :class:`SnapshotError` too (for caches: an entry that cannot be verified is
    made again)."""
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
    stored = meta.get(DIGEST_KEY)
    claimed_random = meta.get("is_random") != "false"
    # one pass over the bytes serves both the damage check and the pinned-digest look-up below
    digest = tensors_digest(tensors) if stored is not None or not claimed_random else None
    if stored is None and require_digest:
        raise SnapshotError(f"{path} holds no digest of its tensors (saved by an older v2s_nb?), so it cannot be "
                            "checked.")
    if stored is not None and stored != digest:
        raise SnapshotError(f"{path}: the tensors do not match the digest stored when it was saved; damaged file.")
    try:
        config = json.loads(meta["config"])
    except KeyError:
        raise SnapshotError(f"{path}: the v2s_nb generator file has no 'config' metadata; corrupt file.") from None
    except (ValueError, TypeError, RecursionError) as e:
        raise SnapshotError(f"{path}: the generator config in the metadata is not readable JSON "
                            f"({type(e).__name__}); corrupt file.") from None
    G = build_checked(config, path)
    try:
        result = G.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise SnapshotError(f"{path}: tensors do not match the stored config "
                            f"({str(e).splitlines()[-1].strip()[:200]}).") from None
    if result.missing_keys or result.unexpected_keys:
        raise SnapshotError(f"{path}: tensors do not match the stored config (missing {result.missing_keys[:3]}, "
                            f"unexpected {result.unexpected_keys[:3]}).")
    check_finite(tensors, path)
    claimed_source = meta.get("source") or str(path)
    G.is_random = claimed_random
    G.source = claimed_source
    if not claimed_random:
        state = G.state_dict()
        if any(tensors[k].dtype != v.dtype for k, v in state.items()):  # G holds other dtypes: its own digest
            digest = tensors_digest(state)
        if digest in PINNED_WEIGHT_DIGESTS:
            G.source = PINNED_WEIGHT_DIGESTS[digest]
            G.weights_verified = True
        else:
            # Metadata is text anyone can write: a file saying "trained, from NVIDIA" is not believed unless its
            # tensors match a pinned digest. The claim is kept, marked as such.
            G.weights_verified = False
            G.source = f"{claimed_source} (claimed by {Path(str(path)).name}; UNVERIFIED: no pinned digest matches)"
    return G.eval().requires_grad_(False)


#: SHA-256 of :func:`weights_digest` of trained generators whose origin was checked, -> description. A
#: ``.safetensors`` file whose metadata says ``is_random=false`` is labelled verified only when its tensors'
#: digest is listed here. Empty: no official StyleGAN3 digest has been checked yet.
PINNED_WEIGHT_DIGESTS: dict[str, str] = {}


def weights_digest(G) -> str:
    """SHA-256 over the generator's tensors (names in sorted order, dtype, shape and bytes), hex."""
    return tensors_digest(G.state_dict())


#: The metadata key of :func:`tensors_digest` of the saved tensors.
DIGEST_KEY = "tensors_sha256"


def tensors_digest(tensors: dict) -> str:
    """SHA-256 over ``tensors`` {name: tensor}: names in sorted order, each with its dtype, shape and bytes; hex."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(tensors.items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
