"""ReStyle encoders for StyleGAN3 (the paper's §3.1 inversion): images -> W+ codes in a few forward passes.

Loads the ReStyle-pSp and ReStyle-e4e encoders that Alaluf et al. released with *stylegan3-editing*
(``restyle_pSp_ffhq.pt``, ``restyle_e4e_ffhq.pt``) and runs their iterative refinement::

    from v2s_nb.method.encoder import load_encoder
    E = load_encoder("restyle-e4e-ffhq")          # a known name, a file name, or a path
    E.kind, E.latent_avg.shape                     # 'psp' or 'e4e'; [512] or [16, 512]
    E.generator                                    # the v2s_nb Generator rebuilt from the checkpoint's decoder
    ws = E.encode(images, n_iters=3)               # float [N, 3, H, W] in [-1, 1] (or uint8 [N, H, W, 3])
                                                   # -> ws [N, num_ws, w_dim] on E.device

The network (an IR-SE-50 body on a 6-channel input, one map-to-style head per W+ row on its 16x16 features):

* stem: 3x3 convolution from 6 channels (the image and the current reconstruction, both 256 px) to 64, batch
  norm, PReLU;
* body: 24 IR-SE bottleneck units in four stages of 3, 4, 14 and 3 units (64, 128, 256 and 512 channels); the
  first unit of each stage has stride 2 (256 px -> 16 px). A unit adds a shortcut (identity subsampling, or a
  1x1 strided convolution + batch norm where the width changes) to a residual branch: batch norm, 3x3
  convolution, PReLU, 3x3 convolution (with the stride), batch norm, squeeze-and-excitation (global average, 1x1
  convolutions to channels / 16 and back with a ReLU between, sigmoid gate);
* heads: per W+ row, ``log2(16) = 4`` stride-2 3x3 convolutions with leaky ReLU (slope 0.01) down to 1x1, then
  an equalised linear layer (weight scaled by ``1 / sqrt(in)``). ReStyle-pSp's row i is head i's output;
  ReStyle-e4e's row 0 is head 0's and row i > 0 is head 0's plus head i's (e4e's progressive deltas, all of
  them at inference).

Iterations (ReStyle): the reconstruction starts as the image of ``latent_avg`` (rendered at the generator's
resolution with the identity input transform in float32, then average-pooled to 256x256); each iteration feeds
``[image, reconstruction]`` to the network and adds its output to the current code (``latent_avg`` on the
first); the new code's image, pooled to 256, is the next reconstruction. Input images of another size are
resized to 256 (antialiased bilinear) first.

The architecture is read from the checkpoint's tensors (stages, widths, head count), so smaller encoders of the
same design load too. Checkpoints are read with ``torch.load(weights_only=True)``: only tensors, plain
containers and the ``pathlib`` / numpy scalar types that the released files' ``opts`` hold can be rebuilt; any
other object in the file is refused without being run.
"""

from __future__ import annotations

import math
import pathlib
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..stylegan3.precompile import Workload, batch_sizes, ensure_compiled
from ..stylegan3.snapshot import SnapshotError
from ..stylegan3.state_dict import generator_from_state_dict
from ..validate import integer, renamed_kwargs
from ..progress import progress_iter

__all__ = ["ReStyleEncoder", "ReStyleNet", "EncoderCheckpointError", "load_encoder", "read_checkpoint",
           "ENCODER_NAMES", "ENCODE_SIZE"]

#: Side of the square images the encoder sees (pixels).
ENCODE_SIZE = 256

#: Known short names (see :data:`v2s_nb.weights.KNOWN_FILES`) -> kind.
ENCODER_NAMES = {"restyle-psp-ffhq": "psp", "restyle-e4e-ffhq": "e4e"}

_KIND_OF_TYPE = {"BackboneEncoder": "psp", "ProgressiveBackboneEncoder": "e4e"}


class EncoderCheckpointError(SnapshotError):
    """The file is not a ReStyle checkpoint this loader can read (the message says why); nothing was executed."""


# ------------------------------------------------------------------------------------------------------------
# The network. Sub-module names follow the released checkpoints' state-dict keys.
# ------------------------------------------------------------------------------------------------------------


class _SqueezeExcite(nn.Module):
    """Channel gate: x * sigmoid(fc2(relu(fc1(mean_hw(x))))), fc1/fc2 bias-free 1x1 convolutions."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x):
        g = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(g))))


class _IRSEUnit(nn.Module):
    """IR-SE bottleneck unit: shortcut(x) + residual(x); ``stride`` on the second 3x3 convolution."""

    def __init__(self, cin: int, cout: int, stride: int, reduction: int = 16):
        super().__init__()
        self.stride = int(stride)
        if cin == cout:
            self.shortcut_layer = None  # identity, subsampled by the stride (a 1x1 max pool in the original)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), _SqueezeExcite(cout, reduction))

    def forward(self, x):
        if self.shortcut_layer is None:
            short = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        else:
            short = self.shortcut_layer(x)
        return self.res_layer(x) + short


class _EqualLinear(nn.Module):
    """y = x @ (weight / sqrt(in)).T + bias (equalised learning rate, multiplier 1)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x):
        return F.linear(x, self.weight / math.sqrt(self.weight.shape[1]), self.bias)


class _StyleHead(nn.Module):
    """``n_down`` stride-2 3x3 convolutions + leaky ReLU (0.01) from [N, cin, S, S] to [N, cout, 1, 1]; a linear."""

    def __init__(self, cin: int, cout: int, n_down: int):
        super().__init__()
        mods = []
        for i in range(n_down):
            mods += [nn.Conv2d(cin if i == 0 else cout, cout, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*mods)
        self.linear = _EqualLinear(cout, cout)

    def forward(self, x):
        x = self.convs(x)
        return self.linear(x.reshape(x.shape[0], -1))


class ReStyleNet(nn.Module):
    """One ReStyle forward pass: [N, in_channels, 256, 256] -> code residual [N, n_styles, style_dim].

    Args:
        units: ``(in_channels, out_channels, stride)`` of each body unit, in order (IR-SE-50: 24 units).
        in_channels: input channels (6: image + reconstruction); ``stem``: the stem's width (64).
        n_styles: W+ rows (heads); ``style_dim``: their width (w_dim); ``n_down``: stride-2 convolutions per head.
        progressive: False for ReStyle-pSp (independent rows), True for ReStyle-e4e (row 0 + per-row deltas).
    """

    def __init__(self, units, in_channels: int = 6, stem: int = 64, n_styles: int = 16, style_dim: int = 512,
                 n_down: int = 4, progressive: bool = False):
        super().__init__()
        self.units = [tuple(int(v) for v in u) for u in units]
        self.progressive = bool(progressive)
        self.input_layer = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                         nn.PReLU(stem))
        self.body = nn.Sequential(*[_IRSEUnit(*u) for u in self.units])
        feat = self.units[-1][1] if self.units else stem
        self.styles = nn.ModuleList([_StyleHead(feat, style_dim, n_down) for _ in range(n_styles)])

    @staticmethod
    def ir_se50_units(widths=(64, 128, 256, 512), counts=(3, 4, 14, 3), stem: int = 64) -> list[tuple]:
        """Unit list of an IR-SE body: stage k has ``counts[k]`` units of ``widths[k]`` channels, stride 2 first."""
        units, cin = [], stem
        for w, n in zip(widths, counts):
            for i in range(n):
                units.append((cin, w, 2 if i == 0 else 1))
                cin = w
        return units

    @classmethod
    def from_state_dict(cls, sd: dict, progressive: bool, where: str = "checkpoint") -> "ReStyleNet":
        """The network whose shapes ``sd`` (keys without the ``encoder.`` prefix) holds, with its weights loaded.

        Body strides are not stored; as in IR-SE bodies, each run of units of one width starts with stride 2.
        """
        try:
            stem_w = sd["input_layer.0.weight"]
            n_units = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k)))
            n_styles = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"styles\.(\d+)\.", k)))
            n_down = sum(1 for k in sd if re.fullmatch(r"styles\.0\.convs\.\d+\.weight", k))
            style_dim = int(sd["styles.0.linear.weight"].shape[0])
            units, prev = [], None
            for i in range(n_units):
                w = sd[f"body.{i}.res_layer.1.weight"]
                cout, cin = int(w.shape[0]), int(w.shape[1])
                units.append((cin, cout, 2 if cout != prev else 1))
                prev = cout
        except (KeyError, ValueError) as e:
            raise EncoderCheckpointError(f"{where}: the encoder tensors are not an IR-SE ReStyle encoder "
                                         f"(missing {e}); only BackboneEncoder / ProgressiveBackboneEncoder on "
                                         f"IR-SE-50 are supported.") from None
        net = cls(units, in_channels=int(stem_w.shape[1]), stem=int(stem_w.shape[0]), n_styles=n_styles,
                  style_dim=style_dim, n_down=n_down, progressive=progressive)
        ours = net.state_dict()
        bad = sorted(set(ours) ^ set(sd)) + sorted(k for k in sd if k in ours and sd[k].shape != ours[k].shape)
        if bad:
            raise EncoderCheckpointError(f"{where}: the encoder tensors do not fit the IR-SE ReStyle layout read "
                                         f"from them (first differences: {bad[:4]}).")
        net.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()})
        return net.eval().requires_grad_(False)

    def forward(self, x):
        f = self.body(self.input_layer(x))
        rows = torch.stack([head(f) for head in self.styles], dim=1)  # [N, n_styles, style_dim]
        if self.progressive:
            rows = torch.cat([rows[:, :1], rows[:, :1] + rows[:, 1:]], dim=1)
        return rows


# ------------------------------------------------------------------------------------------------------------
# Checkpoint reading
# ------------------------------------------------------------------------------------------------------------


def _allowed_globals() -> list:
    """Types that the released checkpoints' ``opts`` / bookkeeping need beyond what weights_only allows."""
    allowed = []
    for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"):
        allowed.append((getattr(pathlib, name), f"pathlib.{name}"))
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((multiarray.scalar, f"{mod}.scalar"))
    allowed.append((np.dtype, "numpy.dtype"))
    for dt in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, dt):
            allowed.append((getattr(np.dtypes, dt), f"numpy.dtypes.{dt}"))
    return allowed


def _describe_non_checkpoint(head: bytes) -> str | None:
    """What a file is when its first bytes show it is no torch.save output (a zip archive or, from torch < 1.6,
    a pickle), as :func:`v2s_nb.stylegan3.snapshot.read_snapshot` recognises non-pickles; None when it may be one."""
    stripped = head.lstrip().lower()
    if len(head) == 0:
        return "an empty file (an interrupted download?)"
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in stripped[:512]:
        return "an HTML/XML page (a failed or redirected download?)"
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        return "neither a zip archive nor a pickle (text, an image or other unrelated bytes)"
    return None


def read_checkpoint(path) -> dict:
    """``torch.load`` a ReStyle checkpoint with ``weights_only=True`` (CPU tensors) and check its layout.

    Returns the dict (``'state_dict'``, ``'opts'``, ``'latent_avg'``, ...). Raises :class:`EncoderCheckpointError`
    for anything else, including files that hold objects outside the allowed types (they are not run).
    """
    path = Path(path)
    fix = "give the .pt file released with stylegan3-editing (restyle_pSp_ffhq.pt / restyle_e4e_ffhq.pt)"
    if path.is_dir():
        raise EncoderCheckpointError(f"{path} is a folder, not a torch checkpoint; {fix}.")
    with open(path, "rb") as f:  # a missing file stays a FileNotFoundError
        head = f.read(1024)
    what = _describe_non_checkpoint(head)
    if what:
        raise EncoderCheckpointError(f"{path} is not a torch checkpoint: it is {what}; {fix}.")
    if b"torch_utils.persistence" in head or b"dnnlib" in head:
        raise EncoderCheckpointError(f"{path} is an NVIDIA StyleGAN snapshot pickle: a generator, not an encoder "
                                     f"(load it with v2s_nb.stylegan3.load_generator); as the encoder {fix}.")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message opens with generic advice (weights_only=False: never for an unknown file); keep the cause
        text = str(e).strip()
        cause = text.split("WeightsUnpickler error:", 1)[1].strip() if "WeightsUnpickler error:" in text else text
        first = cause.splitlines()[0] if cause else type(e).__name__
        what = ("holds an object that is not a tensor, a plain container or one of the few allowed types"
                if "global" in first.lower() else "is corrupt or a pickle of another kind, not a torch checkpoint")
        raise EncoderCheckpointError(f"{path}: refusing to load it: the file {what} ({first[:200]}). Nothing from it "
                                     f"was run; {fix}.") from None
    except FileNotFoundError:
        raise
    except Exception as e:  # torch.load's reader on malformed bytes: KeyError, EOFError, RuntimeError, ...
        raise EncoderCheckpointError(f"{path} is not a torch checkpoint ({type(e).__name__}: {str(e)[:200]}): "
                                     f"truncated, corrupt or another kind of file; {fix}.") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        got = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise EncoderCheckpointError(f"{path} is not a ReStyle checkpoint: expected a dict with 'state_dict', "
                                     f"'opts' and 'latent_avg', got {got}.")
    return ckpt


def _split(sd: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix + ".")}


def _kind_from(ckpt: dict, enc_sd: dict, where) -> str:
    opts = ckpt.get("opts")
    etype = opts.get("encoder_type") if isinstance(opts, dict) else None
    if etype is not None:
        if etype not in _KIND_OF_TYPE:
            raise EncoderCheckpointError(f"{where}: encoder_type {etype!r} is not supported (only "
                                         f"{sorted(_KIND_OF_TYPE)}: the IR-SE-50 ReStyle encoders).")
        return _KIND_OF_TYPE[etype]
    raise EncoderCheckpointError(f"{where}: the checkpoint's opts do not say its encoder_type "
                                 f"(BackboneEncoder = ReStyle-pSp or ProgressiveBackboneEncoder = ReStyle-e4e).")


# ------------------------------------------------------------------------------------------------------------
# The encoder
# ------------------------------------------------------------------------------------------------------------


class ReStyleEncoder:
    """A loaded ReStyle encoder with its generator. See the module docstring.

    Attributes:
        kind: ``'psp'`` or ``'e4e'``.
        net: the :class:`ReStyleNet`.
        generator: the checkpoint's decoder as a v2s_nb ``Generator`` (identity input transform).
        latent_avg: the start code, [w_dim] or [num_ws, w_dim] float32.
        source: where it was loaded from.
    """

    def __init__(self, net: ReStyleNet, generator, latent_avg: torch.Tensor, kind: str, source: str = ""):
        self.net, self.generator, self.kind, self.source = net, generator, kind, source
        self.latent_avg = latent_avg.detach().to(torch.float32)
        num_ws, w_dim = generator.num_ws, generator.w_dim
        if len(net.styles) != num_ws or net.styles[0].linear.weight.shape[0] != w_dim:
            raise EncoderCheckpointError(f"{source}: the encoder outputs {len(net.styles)} x "
                                         f"{net.styles[0].linear.weight.shape[0]} codes, its generator takes "
                                         f"{num_ws} x {w_dim}.")
        if tuple(self.latent_avg.shape) not in ((w_dim,), (num_ws, w_dim)):
            raise EncoderCheckpointError(f"{source}: latent_avg has shape {tuple(self.latent_avg.shape)}, expected "
                                         f"[{w_dim}] or [{num_ws}, {w_dim}].")
        self._avg_image = {}
        self.to(generator.device)

    @property
    def device(self) -> torch.device:
        return self.latent_avg.device

    def to(self, device) -> "ReStyleEncoder":
        """Move the network, generator and start code to ``device`` (in place); returns self."""
        device = torch.device(device)
        self.net.to(device)
        self.generator.to(device)
        self.latent_avg = self.latent_avg.to(device)
        return self

    def __repr__(self):
        return (f"ReStyleEncoder(kind={self.kind!r}, {len(self.net.units)} IR-SE units, "
                f"{len(self.net.styles)}x{self.generator.w_dim} codes, generator {self.generator.img_resolution} px, "
                f"device={self.device}, source={self.source!r})")

    def matches(self, G, atol: float = 0.0) -> bool:
        """True when ``G`` has this encoder's decoder: the same tensors (the input transform aside)."""
        ours, theirs = self.generator.state_dict(), G.state_dict()
        if set(ours) != set(theirs):
            return False
        for k, v in ours.items():
            if k.endswith("input.transform"):
                continue
            w = theirs[k]
            if v.shape != w.shape or not torch.allclose(v.to("cpu", torch.float32), w.to("cpu", torch.float32),
                                                        rtol=0, atol=atol):
                return False
        return True

    def render256(self, ws: torch.Tensor, force_fp32: bool = True) -> torch.Tensor:
        """The generator's images of ``ws`` (identity input transform) average-pooled to [N, 3, 256, 256]."""
        eye = torch.eye(3, device=ws.device)
        img = self.generator.synthesis(ws, transform=eye, force_fp32=force_fp32)
        return F.adaptive_avg_pool2d(img.to(torch.float32), (ENCODE_SIZE, ENCODE_SIZE))

    def start_codes(self, n: int) -> torch.Tensor:
        """``latent_avg`` broadcast to [n, num_ws, w_dim]."""
        avg = self.latent_avg
        return avg.expand(n, self.generator.num_ws, self.generator.w_dim) if avg.ndim == 1 else \
            avg.unsqueeze(0).expand(n, -1, -1)

    def average_image(self, force_fp32: bool = True) -> torch.Tensor:
        """The image of ``latent_avg``, pooled to 256: [1, 3, 256, 256] (cached per device and precision)."""
        key = (str(self.device), force_fp32)
        if key not in self._avg_image:
            with torch.no_grad():
                self._avg_image[key] = self.render256(self.start_codes(1).contiguous(), force_fp32)
        return self._avg_image[key]

    @staticmethod
    def prepare(images) -> torch.Tensor:
        """Images as the encoder sees them: float32 [N, 3, 256, 256] in [-1, 1] on the CPU (see
        :func:`v2s_nb.method.invert.prepare_images` for the accepted forms; other sizes are resized to 256)."""
        from .invert import ImageResizeWarning, prepare_images

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="images are .* resized", category=ImageResizeWarning)
            return prepare_images(images, ENCODE_SIZE)

    def _batches(self, images, batch_size):
        """(N, iterator of (start, [b, 3, 256, 256] float32 on the device)). Arrays of the usual video layouts
        (uint8 [N, H, W, 3], float [N, 3, H, W]) are converted and resized on the device batch by batch, with the
        same operations as :meth:`prepare`; anything else goes through :meth:`prepare` first."""
        arr = images if torch.is_tensor(images) or isinstance(images, np.ndarray) else None
        fast = (arr is not None and arr.ndim == 4 and arr.shape[0] > 0
                and ((arr.dtype in (np.uint8, torch.uint8) and arr.shape[-1] == 3 and arr.shape[1] == arr.shape[2])
                     or (arr.dtype in (np.float32, torch.float32) and arr.shape[1] == 3
                         and arr.shape[2] == arr.shape[3])))
        if not fast:
            x_all = self.prepare(images)
            return x_all.shape[0], ((s, x_all[s:s + batch_size].to(self.device))
                                    for s in range(0, x_all.shape[0], batch_size))
        n = arr.shape[0]

        def gen():
            for s in range(0, n, batch_size):
                x = torch.as_tensor(arr[s:s + batch_size]).to(self.device, non_blocking=True)
                if x.dtype == torch.uint8:
                    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
                else:
                    bad = ~torch.isfinite(x).flatten(1).all(1)
                    if bad.any():
                        raise ValueError(f"images contain NaN or inf values in frame(s) "
                                         f"{(torch.nonzero(bad).flatten() + s).tolist()}")
                    if float(x.abs().max()) > 10:
                        raise ValueError("float images must be in [-1, 1]; scale 0..255 floats with x / 127.5 - 1")
                h = x.shape[-1]
                if h != ENCODE_SIZE:
                    x = F.interpolate(x, size=(ENCODE_SIZE, ENCODE_SIZE), mode="bilinear", align_corners=False,
                                      antialias=h > ENCODE_SIZE).clamp(-1, 1)
                yield s, x.contiguous()
        return n, gen()

    @torch.no_grad()
    def encode(self, images, n_iters: int = 3, batch_size: int = 8, return_steps: bool = False,
               force_fp32: bool = True, progress: bool = False):
        """W+ codes of aligned face crops by ``n_iters`` ReStyle iterations.

        Args:
            images: float [N, 3, H, W] in [-1, 1] or uint8 [N, H, W, 3] (numpy or torch), square; resized to 256.
            n_iters: iterations (the released models were trained with 3 to 5; each costs one encoder pass and,
                except the last, one generator render).
            batch_size: images per forward pass.
            return_steps: also return the codes after every iteration, [n_iters, N, num_ws, w_dim].
            force_fp32: render the reconstructions in float32 as the reference does (False lets the generator's
                fp16 layers run in fp16 on CUDA: faster, slightly different codes).
            progress: a progress bar over batches.
        Returns:
            ws [N, num_ws, w_dim] float32 on :attr:`device` (and the per-iteration codes if ``return_steps``).
        """
        n_iters = integer(n_iters, "n_iters", 1, 100)  # 2.5 is refused, not truncated to 2
        batch_size = integer(batch_size, "batch_size", 1, 4096)
        n, batches = self._batches(images, batch_size)
        sizes = {1} | set(batch_sizes(n, batch_size))  # 1: the average image
        ensure_compiled(self.generator, [Workload(b, force_fp32=force_fp32) for b in sorted(sizes)], progress)
        avg_img = self.average_image(force_fp32)
        out = torch.empty([n_iters, n, self.generator.num_ws, self.generator.w_dim], device=self.device)
        batches = progress_iter(batches, total=-(-n // batch_size), desc=f"ReStyle-{self.kind} encoding {n} image(s)",
                                unit="batch", enabled=progress)
        for s, x in batches:
            b = x.shape[0]
            rec = avg_img.expand(b, -1, -1, -1)
            ws = self.start_codes(b)
            for it in range(n_iters):
                ws = ws + self.net(torch.cat([x, rec], dim=1))
                out[it, s:s + b] = ws
                if it + 1 < n_iters:
                    rec = self.render256(ws, force_fp32)
        return (out[-1].clone(), out) if return_steps else out[-1].clone()


def _resolve(path_or_name) -> tuple[Path, str]:
    from ..weights import KNOWN_FILES, fetch

    s = str(path_or_name)
    p = Path(s).expanduser()
    if p.exists():
        return p, s
    by_file = {kf.filename: name for name, kf in KNOWN_FILES.items() if name in ENCODER_NAMES}
    name = s if s in ENCODER_NAMES else by_file.get(s)
    if name is None:
        raise FileNotFoundError(f"encoder checkpoint not found: {s}. Pass a path to a ReStyle .pt file or one of "
                                f"the known names {sorted(ENCODER_NAMES)}.")
    return fetch(name), name


def load_encoder(path_or_name, device=None) -> ReStyleEncoder:
    """Load a ReStyle-pSp / ReStyle-e4e checkpoint of stylegan3-editing (safely, see :func:`read_checkpoint`).

    Args:
        path_or_name: a path, a known name (``'restyle-psp-ffhq'``, ``'restyle-e4e-ffhq'``) or its file name
            (``'restyle_pSp_ffhq.pt'``, ``'restyle_e4e_ffhq.pt'``); known files come from
            :func:`v2s_nb.weights.fetch` (its cache or ``V2S_NB_WEIGHTS_DIR``).
        device: where to run (``None``: CPU).
    Returns:
        A :class:`ReStyleEncoder` whose ``generator`` is built from the checkpoint's ``decoder.*`` tensors.
    Raises:
        FileNotFoundError: no such file or name. EncoderCheckpointError: unreadable, unsafe or unsupported file.
    """
    path, label = _resolve(path_or_name)
    ckpt = read_checkpoint(path)
    sd = ckpt["state_dict"]
    enc_sd, dec_sd = _split(sd, "encoder"), _split(sd, "decoder")
    if not enc_sd:
        raise EncoderCheckpointError(f"{path}: the state_dict has no 'encoder.*' tensors; not a ReStyle checkpoint.")
    if not dec_sd:
        raise EncoderCheckpointError(f"{path}: the state_dict has no 'decoder.*' tensors (the generator the "
                                     f"encoder was trained with); cannot encode without it.")
    kind = _kind_from(ckpt, enc_sd, path)
    net = ReStyleNet.from_state_dict(enc_sd, progressive=kind == "e4e", where=str(path))
    # As the reference loader does, the stored input transform is not loaded: the decoder keeps the identity.
    G = generator_from_state_dict(dec_sd, where=f"{path} (decoder)", skip=("synthesis.input.transform",))
    G.source = f"{path} (ReStyle-{kind} decoder)"
    latent_avg = ckpt.get("latent_avg")
    if not torch.is_tensor(latent_avg):
        raise EncoderCheckpointError(f"{path}: no 'latent_avg' tensor (the codes' starting point).")
    E = ReStyleEncoder(net, G, latent_avg, kind, source=str(label))
    return E.to(device or "cpu")


# ------------------------------------------------------------------------------------------------------------
# Inversion by encoder (video frames, reference photo + PTI)
# ------------------------------------------------------------------------------------------------------------


def encoder_digest(E: ReStyleEncoder) -> str:
    """SHA-256 (hex) over the encoder network's tensors and ``latent_avg`` (identifies it in cache keys)."""
    import hashlib

    from ..caching import hash_tensor

    h = hashlib.sha256()
    for k, v in E.net.state_dict().items():
        h.update(k.encode())
        hash_tensor(h, v)
    hash_tensor(h, E.latent_avg)
    return h.hexdigest()


def encoder_for(G, encoder, say=print) -> ReStyleEncoder | None:
    """``encoder`` (a :class:`ReStyleEncoder`, a path or known name, or None) if it was trained with ``G``'s
    weights, else None after telling ``say`` that optimisation-only inversion runs instead."""
    if encoder is None:
        return None
    E = encoder if isinstance(encoder, ReStyleEncoder) else load_encoder(encoder, device=G.device)
    if E.matches(G):
        return E.to(G.device)
    if say is not None:
        say(f"encoder {E.source} was trained with another generator ({E.generator.img_resolution} px, "
            f"{E.generator.source}); its codes would not fit {G.source}: inverting by optimisation only.")
    return None


@renamed_kwargs(batch="batch_size")
def invert_with_encoder(E: ReStyleEncoder, G, images, *, n_iters: int = 3, batch_size: int = 8, refine_steps: int = 0,
                        refine_lr: float = 0.01, refine_kwargs: dict | None = None, force_fp32: bool = True,
                        frame_indices=None, cache_dir=None, progress: bool = True):
    """W+ codes of aligned crops (e.g. every frame of a video) by the encoder, optionally refined by optimisation.

    All images are encoded in batches of ``batch_size`` (``n_iters`` ReStyle iterations, see
    :meth:`ReStyleEncoder.encode`); with ``refine_steps > 0`` every code then starts a short
    :func:`~v2s_nb.method.invert.invert` run on ``G`` (peak learning rate ``refine_lr``, no noise on w;
    ``refine_kwargs`` overrides other settings of :func:`invert`).

    Args:
        E: the encoder; G: the generator the codes are for (normally ``E.generator`` or the same weights).
        images: as for :func:`~v2s_nb.method.invert.invert` (uint8 [N, H, W, 3] or float [N, 3, H, W] in [-1, 1]).
        cache_dir: as for :func:`invert`; the key covers the images, the encoder's and generator's weights and
            these settings. With ``refine_steps``, the encoder's codes and each finished batch of the refinement
            are also kept there (``batches/refine/<key>/``), so an interrupted call resumes from them.
    Returns:
        :class:`~v2s_nb.method.invert.Inversion` (codes on the CPU, PSNR against the images at G's resolution;
        ``settings['mode']`` is ``'encoder'``; ``total_steps`` counts the refinement's Adam steps).
    """
    from .invert import (Inversion, _cache_lookup, _keyed_by, _reconstruction_mse, _resolve_perceptual,
                         _saved_batch, generator_identity, invert, prepare_images, psnr_from_mse)

    targets = prepare_images(images, G.img_resolution, frame_indices)
    n = targets.shape[0]
    idx = list(range(n)) if frame_indices is None else [int(i) for i in frame_indices]
    recorded = dict(refine_kwargs or {})
    if callable(recorded.get("perceptual")):  # keyed by what names it, as invert's own cache is (not its address)
        recorded["perceptual"] = _resolve_perceptual(recorded["perceptual"], "cpu")[1]
        _keyed_by(recorded["perceptual"], cache_dir=cache_dir)
    settings = {"mode": "encoder", "encoder": E.kind, "encoder_sha256": encoder_digest(E), "n_iters": int(n_iters),
                "force_fp32": bool(force_fp32), "refine_steps": int(refine_steps), "refine_lr": float(refine_lr),
                "refine_kwargs": recorded}
    gen_id = generator_identity(G)
    cache_file, cached = _cache_lookup(cache_dir, "enc", targets, E.start_codes(1).float().cpu(), gen_id, settings,
                                       idx)
    if cached is not None:
        return cached
    # the refinement's checkpoints: the encoder's codes (its start, keyed into each batch) and its batches, in a
    # folder named like the result's cache entry (the same key: images, start codes, generator, settings)
    run = cache_file.parent / "batches" / "refine" / cache_file.name if cache_file and refine_steps > 0 else None
    saved = _saved_batch(run / "codes", "encoder codes") if run is not None else None
    ws = saved.ws if saved is not None else None
    if ws is None or ws.shape[0] != n:
        E.to(G.device)
        ws = E.encode(images, n_iters=n_iters, batch_size=batch_size, force_fp32=force_fp32, progress=progress)
        if run is not None:  # a rerun starts the refinement from these same codes, so its batches' keys match
            Inversion(ws=ws.float().cpu(), mse=np.zeros(n), psnr=np.zeros(n), loss_history=[],
                      settings={"mode": "encoder codes", "checkpoint_key": "encoder codes"}, generator=gen_id,
                      frame_indices=np.asarray(idx, dtype=np.int64)).save(run / "codes")
    hist, total = [], 0
    if refine_steps > 0:
        kw = dict(lr=float(refine_lr), w_noise=0.0, lr_rampup=0.0, batch_size=int(batch_size), progress=progress)
        kw.update(refine_kwargs or {})
        ref = invert(G, targets, steps=int(refine_steps), init=ws, frame_indices=idx, checkpoint_dir=run, **kw)
        ws, hist, total = ref.ws, list(ref.loss_history), ref.total_steps
    ws = ws.to(G.device, torch.float32)
    mse = _reconstruction_mse(G, ws, targets, batch_size)
    inv = Inversion(ws=ws.float().cpu(), mse=mse, psnr=psnr_from_mse(mse), loss_history=hist, settings=settings,
                    generator=gen_id, frame_indices=np.asarray(idx, dtype=np.int64), total_steps=total,
                    frame_steps=int(refine_steps) * n)
    if cache_file is not None:
        inv.save(cache_file)
    return inv


def invert_reference(G, image, *, encoder=None, pti: bool | None = None, n_iters: int = 3, pti_steps: int = 350,
                     invert_steps: int | None = None, cache_dir=None, progress: bool = True, say=print, **pti_kwargs):
    """The reference photo's code and the generator to render it with (paper §3.1 / §3.3).

    With a matching ``encoder`` (see :func:`encoder_for`) the code is the encoder's; otherwise ``invert_steps`` of
    optimisation (:func:`~v2s_nb.method.invert.invert`; default: its ``steps``). Then, when ``pti`` (default: on
    for trained generators, off for random-weight ones), :func:`~v2s_nb.method.invert.pivotal_tuning` fine-tunes a
    copy of ``G`` around that code for ``pti_steps`` steps. Pose encoding should keep running on ``G``; rendering
    uses the returned one.

    Returns:
        (Inversion of the one image, G_render): ``G_render`` is ``G`` itself when PTI is off.
    """
    from .invert import invert, pivotal_tuning

    E = encoder_for(G, encoder, say=say)
    if E is not None:
        inv = invert_with_encoder(E, G, image, n_iters=n_iters, batch_size=1, cache_dir=cache_dir, progress=False)
    else:
        steps = {} if invert_steps is None else {"steps": int(invert_steps)}
        inv = invert(G, image, cache_dir=cache_dir, progress=progress, **steps)
    if pti is None:
        pti = not bool(getattr(G, "is_random", False))
    if not pti:
        return inv, G
    G_render = pivotal_tuning(G, image, inv, steps=pti_steps, progress=progress, **pti_kwargs)
    return inv, G_render
