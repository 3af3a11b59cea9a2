"""Reading NVIDIA's StyleGAN3 snapshot pickles without running any code from them.

An official ``network-snapshot-*.pkl`` / ``stylegan3-*.pkl`` stores each network as
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where ``meta`` holds the full Python source of
NVIDIA's modules (``module_src``) and the module's ``__dict__`` (``state``). A normal ``pickle.load`` would
import that source. Here a restricted unpickler resolves only an explicit allow-list of globals and turns
every persistent object into an inert :class:`PersistentRecord`; ``module_src`` is never executed, imported
or even kept. Tensors are rebuilt from bytes with ``torch.load(..., weights_only=True)``.

:func:`generator_from_snapshot` then builds our :class:`~v2s_nb.stylegan3.networks.Generator` from the
record's constructor arguments and copies every stored parameter and buffer into it, checking names,
shapes and the derived layer geometry.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch

from .networks import Generator
from ..errors import V2SError


class SnapshotError(V2SError, ValueError):
    """The file is not a StyleGAN3 snapshot this loader can read (the message says what it is instead)."""


class UnsafePickleError(SnapshotError):
    """The pickle refers to a global outside the allow-list (it could run code); nothing was executed."""


@dataclass
class PersistentRecord:
    """Inert stand-in for one of NVIDIA's persistent objects: its class name and its ``__dict__``."""

    class_name: str
    state: dict = field(repr=False)
    version: int | None = None

    @property
    def modules(self) -> dict:
        return _mapping(self.state.get("_modules"), f"{self.class_name}._modules")

    @property
    def init_kwargs(self) -> dict:
        return dict(_mapping(self.state.get("_init_kwargs"), f"{self.class_name}._init_kwargs"))


def _mapping(value, what: str) -> dict:
    """``value`` where it is a dict (None: empty), else a SnapshotError naming ``what``: the file is malformed."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SnapshotError(f"malformed snapshot: {what} is of type {type(value).__name__}, not a dict")
    return value


def _reconstruct_persistent(meta):
    if not isinstance(meta, dict) or "state" not in meta or "class_name" not in meta:
        raise SnapshotError("malformed persistent object in the pickle (no 'class_name' / 'state')")
    if meta.get("type", "class") != "class":
        raise SnapshotError(f"unsupported persistent object type {meta.get('type')!r}")
    # meta['module_src'] is deliberately dropped: it is NVIDIA's source code and is never run.
    state = _mapping(meta["state"], f"the state of {str(meta['class_name'])!r}")
    return PersistentRecord(class_name=str(meta["class_name"]), state=state, version=meta.get("version"))


class EasyDict(dict):
    """Inert replacement for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _storage_from_bytes(data: bytes):
    # torch.storage._load_from_bytes would call torch.load without weights_only; this never runs code.
    if not isinstance(data, (bytes, bytearray)):
        raise SnapshotError(f"a stored tensor's data is a {type(data).__name__}, not bytes")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a global inside the nested pickle
        raise UnsafePickleError(f"a tensor storage inside the pickle holds a nested pickle that refers to "
                                f"objects a tensor does not need; nothing was run ({str(e).splitlines()[0]})") from None


def _storage_bytes(storage) -> int:
    return storage._untyped_storage.nbytes() if isinstance(storage, torch.storage.TypedStorage) else storage.nbytes()


def _storage_elements(storage) -> tuple[int, torch.dtype]:
    """(number of elements, dtype) of a TypedStorage / UntypedStorage (bytes, uint8)."""
    if isinstance(storage, torch.UntypedStorage):
        return storage.nbytes(), torch.uint8
    if isinstance(storage, torch.storage.TypedStorage):
        return storage._size(), storage.dtype
    raise SnapshotError(f"a tensor is built on a {type(storage).__name__}, not a tensor storage")


def _rebuild_tensor_checked(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` that first checks that the storage holds every element the declared
    shape / strides / offset reach. (``Tensor.set_`` would silently grow a short storage with uninitialised
    memory: a snapshot declaring [512, 512] over 16 stored numbers would load as garbage.)"""
    import torch._utils

    try:
        size, stride, offset = tuple(int(x) for x in size), tuple(int(x) for x in stride), int(storage_offset)
    except (TypeError, ValueError):
        raise SnapshotError(f"a tensor has a malformed shape / stride ({size!r}, {stride!r})") from None
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        raise SnapshotError(f"a tensor has an invalid layout: shape {size}, stride {stride}, offset {offset}")
    n, _ = _storage_elements(storage)
    need = 0 if 0 in size else offset + 1 + sum((d - 1) * st for d, st in zip(size, stride))
    if need > n:
        raise SnapshotError(f"a tensor of shape {list(size)} (offset {offset}) needs {need} stored elements but "
                            f"its storage holds {n}: the file is corrupt or crafted (it would load as "
                            f"uninitialised memory)")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks,
                                           *([] if metadata is None else [metadata]))


def _numpy_multiarray():
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _allowed_globals() -> dict:
    import torch._utils

    allowed = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_checked,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    # NVIDIA's released files name numpy 1.x's module, newer files numpy 2's: both mean the same functions.
    multiarray = _numpy_multiarray()
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        for name in ("_reconstruct", "scalar"):
            allowed[(mod, name)] = getattr(multiarray, name)
    if hasattr(torch._utils, "_rebuild_parameter_with_state"):
        allowed[("torch._utils", "_rebuild_parameter_with_state")] = torch._utils._rebuild_parameter_with_state
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self._allowed = _allowed_globals()
        self._allowed[("torch.storage", "_load_from_bytes")] = self._storage
        self._storages = []  # (storage, its size in bytes as stored)

    def _storage(self, data):
        storage = _storage_from_bytes(data)
        self._storages.append((storage, _storage_bytes(storage)))
        return storage

    def load(self):
        out = super().load()
        # A state step (pickle's BUILD) on a rebuilt tensor calls Tensor.__setstate__ -> set_, which grows a
        # storage with uninitialised memory past what the file stored: no storage may end larger than it was read.
        for storage, stored in self._storages:
            if _storage_bytes(storage) != stored:
                raise SnapshotError(f"a tensor storage of {stored} bytes was resized to {_storage_bytes(storage)} "
                                    "after it was read (a tensor re-laid out by the pickle's state): the file is "
                                    "corrupt or crafted (it would load as uninitialised memory)")
        return out

    def find_class(self, module, name):
        key = (module, name)
        if key not in self._allowed:
            hint = ""
            if module.startswith("dnnlib.tflib") or module.startswith("tensorflow"):
                hint = (" This is a TensorFlow StyleGAN/StyleGAN2 pickle; convert it to PyTorch first "
                        "(it is not a StyleGAN3 snapshot).")
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}' from the pickle: it is not on the allow-list of "
                f"objects a StyleGAN3 snapshot needs, and loading it could execute code.{hint}")
        return self._allowed[key]


def _describe_bad_file(head: bytes) -> str | None:
    """Recognise common non-pickle files from their first bytes."""
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in stripped[:512]:
        return ("an HTML/XML page, not a pickle (a failed or redirected download?). Download the snapshot "
                "again, e.g. with v2s_nb.weights.fetch")
    if head.startswith(b"PK\x03\x04"):
        return ("a zip archive (a torch.save checkpoint?), not an NVIDIA snapshot pickle. v2s_nb's own "
                "format is .safetensors; a plain state_dict has no architecture to rebuild from")
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras weights?), not a StyleGAN3 snapshot"
    if len(head) == 0:
        return "an empty file (an interrupted download?)"
    if not head.startswith(b"\x80"):
        return "not a pickle (it does not start with a pickle protocol header): random or unrelated bytes"
    return None


def read_snapshot(path) -> dict:
    """Unpickle an NVIDIA snapshot safely. Returns the top-level dict with :class:`PersistentRecord` values."""
    with open(path, "rb") as f:
        head = f.read(1024)
        bad = _describe_bad_file(head)
        if bad:
            raise SnapshotError(f"{path} is {bad}.")
        f.seek(0)
        try:
            data = _RestrictedUnpickler(f).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
        except SnapshotError:
            raise
        except (EOFError, pickle.UnpicklingError) as e:
            msg = str(e)
            if isinstance(e, EOFError) or "truncated" in msg or "ran out of input" in msg.lower():
                raise SnapshotError(f"{path} is truncated (the pickle ends early: {msg or 'EOF'}); the file is "
                                    f"incomplete — download it again.") from None
            raise SnapshotError(f"{path} is not a readable pickle ({msg}): corrupt or random bytes.") from None
        except Exception as e:  # malformed content inside an otherwise well-formed stream
            raise SnapshotError(f"{path} could not be read as a StyleGAN3 snapshot: {type(e).__name__}: {e}") from None
    if not isinstance(data, dict):
        raise SnapshotError(f"{path} holds a {type(data).__name__}, not a snapshot dict with 'G_ema'.")
    return data


def _plain(value):
    """numpy scalars / arrays in constructor kwargs -> plain Python values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def generator_kwargs_from_record(record: PersistentRecord, path="snapshot") -> dict:
    """Constructor arguments of our Generator from an NVIDIA ``Generator`` record."""
    if record.class_name != "Generator":
        raise SnapshotError(f"{path}: G_ema is a {record.class_name!r}, not a StyleGAN Generator.")
    synthesis = record.modules.get("synthesis")
    if not isinstance(synthesis, PersistentRecord):
        raise SnapshotError(f"{path}: G_ema has no synthesis network.")
    if "input" not in synthesis.modules or synthesis.class_name != "SynthesisNetwork":
        kinds = sorted({m.class_name for m in synthesis.modules.values() if isinstance(m, PersistentRecord)})
        if any(k in ("SynthesisBlock", "ToRGBLayer") for k in kinds) or any(k.startswith("b") for k in synthesis.modules):
            raise SnapshotError(f"{path} is a StyleGAN2 / StyleGAN2-ADA snapshot (synthesis blocks {kinds[:3]}...), "
                                f"not StyleGAN3. Use a stylegan3-r/t snapshot.")
        raise SnapshotError(f"{path}: unrecognised synthesis network ({synthesis.class_name}).")
    args = tuple(record.state.get("_init_args") or ())
    kwargs = _plain(record.init_kwargs)
    if args:  # NVIDIA's Generator signature: (z_dim, c_dim, w_dim, img_resolution, img_channels, ...)
        for name, value in zip(["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"], args):
            kwargs.setdefault(name, _plain(value))
    kwargs["mapping_kwargs"] = dict(kwargs.get("mapping_kwargs") or {})
    for name in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"):
        if name not in kwargs:
            kwargs[name] = _plain(record.state.get(name))
    return kwargs


_GEOMETRY_ATTRS = ("in_channels", "out_channels", "is_torgb", "up_factor", "down_factor", "padding", "conv_kernel",
                   "use_fp16")


def _copy_state(module: torch.nn.Module, record: PersistentRecord, prefix: str, path) -> set:
    """Copy the record's parameters/buffers into ``module`` recursively; return the names filled."""
    filled = set()
    for kind in ("_parameters", "_buffers"):
        for name, value in (record.state.get(kind) or {}).items():
            key = prefix + name
            target = getattr(module, name, None) if hasattr(module, name) else None
            if value is None:
                if target is not None:
                    raise SnapshotError(f"{path}: stored {key} is None but the architecture expects a tensor.")
                continue
            if not isinstance(target, torch.Tensor):
                raise SnapshotError(f"{path}: stored tensor {key} has no place in the rebuilt architecture.")
            if not isinstance(value, torch.Tensor):
                raise SnapshotError(f"{path}: stored {key} is a {type(value).__name__}, not a tensor.")
            if tuple(target.shape) != tuple(value.shape):
                raise SnapshotError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
                                    f" from the snapshot's own constructor arguments.")
            with torch.no_grad():
                target.copy_(value.to(target.dtype))
            filled.add(key)
    for attr in _GEOMETRY_ATTRS:
        if attr in record.state and hasattr(module, attr):
            ours, theirs = _plain(getattr(module, attr)), _plain(record.state[attr])
            if ours != theirs:
                raise SnapshotError(f"{path}: layer {prefix[:-1]} has {attr}={theirs} in the file but {ours} when "
                                    f"rebuilt; unsupported architecture variant.")
    for name, child in record.modules.items():
        if child is None:
            continue
        sub = getattr(module, name, None)
        if not isinstance(child, PersistentRecord) or not isinstance(sub, torch.nn.Module):
            raise SnapshotError(f"{path}: sub-module {prefix}{name} ({getattr(child, 'class_name', type(child))}) "
                                f"is not part of a StyleGAN3 generator.")
        filled |= _copy_state(sub, child, prefix + name + ".", path)
    return filled


def generator_from_snapshot(data: dict, path="snapshot", key: str = "G_ema") -> Generator:
    """Build our Generator from an unpickled snapshot dict (see :func:`read_snapshot`)."""
    if key not in data:
        raise SnapshotError(f"{path} has no {key!r} entry (keys: {sorted(map(str, data))}); not a StyleGAN snapshot.")
    record = data[key]
    if not isinstance(record, PersistentRecord):
        raise SnapshotError(f"{path}: {key} is a {type(record).__name__}, not a persistent network object.")
    kwargs = generator_kwargs_from_record(record, path)
    G = build_checked(kwargs, path)
    filled = _copy_state(G, record, "", path)
    expected = set(G.state_dict().keys())
    missing = sorted(expected - filled)
    if missing:
        raise SnapshotError(f"{path}: the file lacks tensors the generator needs: {missing[:5]}"
                            f"{' ...' if len(missing) > 5 else ''}")
    check_finite(G.state_dict(), path)
    G.source = str(path)
    return G.eval().requires_grad_(False)


#: Bounds on a generator's constructor arguments read from a file (NVIDIA's largest: 1024 px, 512-d W,
#: channel_base 65536, channel_max 1024); a file asking for more is refused before anything is allocated.
_ARG_BOUNDS = {"z_dim": (0, 4096), "c_dim": (0, 4096), "w_dim": (1, 4096), "img_resolution": (4, 4096),
               "img_channels": (1, 4), "channel_base": (1, 1 << 20), "channel_max": (1, 4096),
               "num_layers": (1, 64), "num_critical": (0, 64), "num_fp16_res": (0, 16), "conv_kernel": (1, 7),
               "margin_size": (0, 1024)}


def check_generator_kwargs(kwargs, path="snapshot") -> dict:
    """Refuse constructor arguments that are not a dict of plain values or that ask for absurd sizes (one-line
    :class:`SnapshotError`); returns ``kwargs``."""
    if not isinstance(kwargs, dict):
        raise SnapshotError(f"{path}: the generator config is a {type(kwargs).__name__}, not a dict of arguments.")
    for name, (lo, hi) in _ARG_BOUNDS.items():
        for where in (kwargs, kwargs.get("mapping_kwargs") if isinstance(kwargs.get("mapping_kwargs"), dict) else {}):
            if name not in where or where[name] is None:
                continue
            v = where[name]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
                raise SnapshotError(f"{path}: generator argument {name}={str(v)[:40]!r} is not an integer in "
                                    f"{lo}..{hi}; corrupt or unsupported config.")
    for where in (kwargs, kwargs.get("mapping_kwargs") or {}):
        for name, v in where.items():
            if isinstance(v, (float, np.floating)) and not np.isfinite(v):
                raise SnapshotError(f"{path}: generator argument {name}={v} is not finite; corrupt config.")
    res = kwargs.get("img_resolution")
    if isinstance(res, (int, np.integer)) and res & (res - 1):
        raise SnapshotError(f"{path}: img_resolution={res} is not a power of two; corrupt or unsupported config.")
    return kwargs


def build_checked(kwargs, path="snapshot") -> Generator:
    """``Generator(**kwargs)`` after :func:`check_generator_kwargs`, any failure as one :class:`SnapshotError`."""
    check_generator_kwargs(kwargs, path)
    try:
        return Generator(**kwargs)
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError, RecursionError, OverflowError,
            RuntimeError) as e:
        raise SnapshotError(f"{path}: unsupported generator arguments ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}).") from None


def check_finite(tensors, path="snapshot") -> None:
    """Raise :class:`SnapshotError` naming the tensors that hold NaN or infinite values.

    An error rather than a warning: one non-finite weight turns every image the generator draws into NaN
    (modulated convolutions mix all channels), so such a file has no use; the message names the tensors so
    that a repaired copy can be checked.
    """
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise SnapshotError(f"{path}: {len(bad)} tensor(s) hold NaN / infinite values ({', '.join(bad[:3])}"
                            f"{' ...' if len(bad) > 3 else ''}): the weights are corrupt; every image would be NaN.")
