"""The paper's keypoint CNNs in PyTorch: PFLD (68 landmarks) and the RFB-320 face detector.

Both come from the repository the paper cites for its pose regressor and its keypoint metric ("cunjian 2019",
github.com/cunjian/pytorch_face_landmark, commit 6f34bf9) as ONNX files. They are downloaded on first use by
:func:`v2s_nb.weights.fetch` (``"pfld-68"``, ``"rfb-320-face-detector"``: pinned size and SHA-256; folders in
``$V2S_NB_WEIGHTS_DIR`` are searched first) and never shipped with the package (upstream has no licence file).

At load time each ONNX graph is read with the ``onnx`` package and turned into a :class:`OnnxGraph` module: its
initializers become buffers and its nodes run, in the file's order, as the matching ``torch`` operations. The
result is an ordinary module: CPU or CUDA, any batch size, float32 or float64, and differentiable with respect
to its input (so with respect to the image a crop was taken from).

* :class:`PFLD`: crops float [N, 3, 112, 112] RGB in [0, 1] -> landmarks [N, 68, 2] in crop units (0 = the
  crop's left / top edge, 1 = its right / bottom edge), dlib / iBUG 68-point order.
* :class:`RFBDetector`: images -> face boxes (left, top, right, bottom) in pixels with scores; the network
  sees the frame resized to 320 x 240 as (RGB - 127) / 128 and decodes its prior boxes itself; boxes scoring
  above ``threshold`` (0.7) are kept after greedy non-maximum suppression (IoU 0.3), upstream's settings.
* :func:`crop_squares`: the differentiable crop + resize between the two (bilinear, box-filtered first when
  shrinking by 2x or more), and :func:`face_square` which turns a face box into PFLD's square crop
  (``scale`` x the longer side, centred on the box: 1.1 for RFB boxes as upstream).
* :func:`pfld_landmarks`: images + face boxes -> landmarks in image pixels, differentiable.

Pixel coordinates follow :mod:`v2s_nb.face.landmark_detection`: x right, y down, the centre of the top-left pixel at
(0, 0); a box (left, top, right, bottom) spans those continuous coordinates.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PFLD_INPUT", "RFB_INPUT", "PFLD_SCALE_RFB", "ALIGNED_FACE_SQUARE", "OnnxGraph", "PFLD", "RFBDetector",
    "weights_path", "load_pfld",
    "load_rfb", "crop_squares", "face_square", "pfld_landmarks", "nms",
]

#: PFLD's input side, pixels.
PFLD_INPUT = 112
#: RFB-320's input (width, height), pixels.
RFB_INPUT = (320, 240)
#: PFLD crop side relative to the longer side of an RFB face box (upstream's 1.1).
PFLD_SCALE_RFB = 1.1
#: PFLD's crop on an FFHQ-aligned frame, (left, top, right, bottom) as fractions of the frame's width / height:
#: the 1.1x square of the RFB-320 box found on the aligned astronaut photo (``skimage.data.astronaut``) at 256, 512
#: and 1024 px (centre (0.51, 0.595), side 0.66 in all three), centred horizontally. The FFHQ recipe fixes the eyes'
#: and mouth's place in the crop, so one square serves every aligned frame.
ALIGNED_FACE_SQUARE = (0.17, 0.265, 0.83, 0.925)


# ----------------------------------------------------------------------------------------------- weights


def weights_path(name: str, *, download: bool = True) -> Path:
    """Local path of a known weight file (``"pfld-68"`` or ``"rfb-320-face-detector"``).

    ``download=True``: :func:`v2s_nb.weights.fetch` (downloads on first use). ``download=False``: only the
    folders of ``$V2S_NB_WEIGHTS_DIR`` and the cache are looked at (size / SHA-256 checked), never the network;
    raises :class:`~v2s_nb.weights.WeightsUnavailableError` when the file is in neither.
    """
    from .. import weights

    if download:
        return weights.fetch(name)
    kf = weights.KNOWN_FILES[name]
    target = weights.cache_path(name)
    for path in [d / kf.filename for d in weights.weights_dirs()] + [target]:
        if path.is_file() and path.stat().st_size == kf.size and weights.sha256_file(path) == kf.sha256:
            return path
    raise weights.WeightsUnavailableError(
        f"{name} ({kf.filename}) is not in $V2S_NB_WEIGHTS_DIR nor in the cache ({target}) and download=False; "
        f"call v2s_nb.weights.fetch({name!r}) once with a network connection, or put the file from {kf.url} "
        "in a folder named in V2S_NB_WEIGHTS_DIR.", name=name, url=kf.url, target=target)


# ----------------------------------------------------------------------------------------------- ONNX graph


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv_padding(pads, ndim: int):
    """ONNX pads [b1, b2, e1, e2] -> (padding for conv, or None if asymmetric)."""
    pads = list(pads or [0] * (2 * ndim))
    begin, end = pads[:ndim], pads[ndim:]
    return tuple(begin) if begin == end else None


class OnnxGraph(nn.Module):
    """An ONNX graph (opset 9-10 CNN subset) run with ``torch`` operations; initializers are buffers.

    Supported nodes: Conv, BatchNormalization (inference), Relu, AveragePool, Pad (constant), Gemm, Add, Sub, Mul,
    Div, Exp, Softmax, Concat, Reshape, Transpose, Slice, Shape, Gather, Unsqueeze, Constant: what PFLD and
    RFB-320 use. An unsupported node raises ``NotImplementedError`` at load time, naming it.
    Subnormal float weights (below ~1.2e-38 in magnitude; PFLD's file holds some 450,000) are read as 0: they
    cannot change an output measurably, and arithmetic on them makes a CPU forward pass many times slower
    (docs/performance.md).
    ``forward(x)`` returns the graph's outputs as a tuple, in the file's order.
    """

    OPS = {"Conv", "BatchNormalization", "Relu", "AveragePool", "Pad", "Gemm", "Add", "Sub", "Mul", "Div", "Exp",
           "Softmax", "Concat", "Reshape", "Transpose", "Slice", "Shape", "Gather", "Unsqueeze", "Constant"}

    def __init__(self, model):
        super().__init__()
        from onnx import numpy_helper

        g = model.graph
        self._names: dict[str, str] = {}  # ONNX tensor name -> buffer name (floating-point tensors)
        self._ints: dict[str, torch.Tensor] = {}  # ONNX tensor name -> integer tensor (CPU)
        inits = {t.name for t in g.initializer}
        for t in g.initializer:
            self._add_buffer(t.name, numpy_helper.to_array(t))
        self.input_name = next(i.name for i in g.input if i.name not in inits)
        self.output_names = [o.name for o in g.output]
        self.nodes = []
        for n in g.node:
            if n.op_type not in self.OPS:
                raise NotImplementedError(f"ONNX node {n.op_type!r} ({n.name or n.output[0]}) is not supported by "
                                          "OnnxGraph; supported: " + ", ".join(sorted(self.OPS)))
            a = _attrs(n)
            if n.op_type == "Constant":
                self._add_buffer(n.output[0], numpy_helper.to_array(a["value"]))
                continue
            self.nodes.append((n.op_type, list(n.input), list(n.output), a))

    def _add_buffer(self, name: str, array: np.ndarray) -> None:
        array = np.array(array)
        if array.dtype.kind == "f":  # subnormal weights -> 0 (see the class docstring)
            array[np.abs(array) < np.finfo(array.dtype).tiny] = 0
        t = torch.from_numpy(array)
        if not t.is_floating_point():  # shape arithmetic: stays on the CPU whatever device the module is on
            self._ints[name] = t
            return
        key = f"t{len(self._names)}"
        self._names[name] = key
        self.register_buffer(key, t, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple:
        env = {self.input_name: x, **self._ints}
        for onnx_name, key in self._names.items():
            env[onnx_name] = getattr(self, key)
        for op, ins, outs, a in self.nodes:
            args = [env[i] if i else None for i in ins]
            env[outs[0]] = self._run(op, args, a, x.dtype)
        return tuple(env[o] for o in self.output_names)

    @staticmethod
    def _run(op, args, a, dtype):
        if op == "Conv":
            x, w = args[0], args[1].to(args[0].dtype)
            b = args[2].to(x.dtype) if len(args) > 2 and args[2] is not None else None
            nd = w.ndim - 2
            pad = _conv_padding(a.get("pads"), nd)
            if pad is None:
                p = list(a["pads"])
                x = F.pad(x, [v for i in reversed(range(nd)) for v in (p[i], p[i + nd])])
                pad = (0,) * nd
            stride = tuple(a.get("strides", [1] * nd))
            if w.shape[2:] == (1, 1) and stride == (1, 1) and not any(pad) and int(a.get("group", 1)) == 1:
                # 1x1 convolution as one matrix product (PyTorch's CPU convolution takes a slow path for these)
                y = torch.matmul(w.reshape(w.shape[0], w.shape[1]), x.flatten(2)).reshape(
                    x.shape[0], w.shape[0], *x.shape[2:])
                return y if b is None else y + b.reshape(1, -1, 1, 1)
            return F.conv2d(x, w, b, stride=stride, padding=pad,
                            dilation=tuple(a.get("dilations", [1] * nd)), groups=int(a.get("group", 1)))
        if op == "BatchNormalization":
            x = args[0]
            scale, bias, mean, var = (t.to(x.dtype) for t in args[1:5])
            return F.batch_norm(x, mean, var, scale, bias, training=False, eps=float(a.get("epsilon", 1e-5)))
        if op == "Relu":
            return F.relu(args[0])
        if op == "AveragePool":
            k = tuple(a["kernel_shape"])
            pad = _conv_padding(a.get("pads"), len(k))
            if pad is None or any(pad):
                raise NotImplementedError("AveragePool with padding is not supported by OnnxGraph")
            return F.avg_pool2d(args[0], k, stride=tuple(a.get("strides", k)), ceil_mode=bool(a.get("ceil_mode", 0)))
        if op == "Pad":
            if a.get("mode", b"constant") not in (b"constant", "constant"):
                raise NotImplementedError(f"Pad mode {a.get('mode')!r} is not supported by OnnxGraph")
            p, nd = list(a["pads"]), args[0].ndim
            return F.pad(args[0], [v for i in reversed(range(nd)) for v in (p[i], p[i + nd])],
                         value=float(a.get("value", 0.0)))
        if op == "Gemm":
            x, w = args[0], args[1].to(args[0].dtype)
            x = x.t() if a.get("transA", 0) else x
            w = w.t() if a.get("transB", 0) else w
            y = float(a.get("alpha", 1.0)) * (x @ w)
            if len(args) > 2 and args[2] is not None:
                y = y + float(a.get("beta", 1.0)) * args[2].to(x.dtype)
            return y
        if op in ("Add", "Sub", "Mul", "Div"):
            x, y = args
            if x.is_floating_point() or y.is_floating_point():
                x, y = x.to(dtype) if x.is_floating_point() else x, y.to(dtype) if y.is_floating_point() else y
            return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](x, y)
        if op == "Exp":
            return torch.exp(args[0])
        if op == "Softmax":  # opset < 13: over all dimensions from `axis` on, taken together
            x = args[0]
            axis = int(a.get("axis", 1)) % x.ndim
            return F.softmax(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)
        if op == "Concat":
            return torch.cat(args, dim=int(a["axis"]))
        if op == "Reshape":
            x, shape = args
            shape = [int(v) for v in shape.tolist()]
            shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
            return x.reshape(shape)
        if op == "Transpose":
            return args[0].permute(*a["perm"])
        if op == "Slice":  # opset < 10: starts / ends / axes are attributes
            x = args[0]
            idx = [slice(None)] * x.ndim
            for ax, s, e in zip(a.get("axes", range(len(a["starts"]))), a["starts"], a["ends"]):
                idx[ax] = slice(int(s), min(int(e), x.shape[ax]))
            return x[tuple(idx)]
        if op == "Shape":
            return torch.tensor(list(args[0].shape), dtype=torch.int64)
        if op == "Gather":
            x, i = args
            ax = int(a.get("axis", 0)) % x.ndim
            i = i.to(x.device).long()  # (x is a shape on the CPU, or a tensor with a CPU index)
            return torch.index_select(x, ax, i.reshape(-1)).reshape(
                tuple(x.shape[:ax]) + tuple(i.shape) + tuple(x.shape[ax + 1:]))
        if op == "Unsqueeze":
            x = args[0]
            for ax in sorted(a["axes"]):
                x = x.unsqueeze(ax)
            return x
        raise NotImplementedError(op)  # pragma: no cover - refused at load time


@functools.lru_cache(maxsize=4)
def _onnx_model(path: str):
    import onnx

    return onnx.load(path)


def _graph(name: str, path, download: bool) -> OnnxGraph:
    try:
        import onnx  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency
        raise ImportError("reading the landmark CNN needs the onnx package: pip install onnx") from None
    path = weights_path(name, download=download) if path is None else Path(path)
    return OnnxGraph(_onnx_model(str(path)))


# ----------------------------------------------------------------------------------------------- PFLD


class PFLD(nn.Module):
    """PFLD 68-point landmarks: crops float [N, 3, 112, 112] RGB in [0, 1] -> [N, 68, 2] (x, y) in crop units.

    Built from the ONNX file by :func:`load_pfld`; differentiable with respect to the crops.
    """

    def __init__(self, graph: OnnxGraph):
        super().__init__()
        self.graph = graph.eval()

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of the weights."""
        return next(b.dtype for b in self.buffers() if b.is_floating_point())

    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.ndim != 4 or crops.shape[1:] != (3, PFLD_INPUT, PFLD_INPUT):
            raise ValueError(f"PFLD takes crops [N, 3, {PFLD_INPUT}, {PFLD_INPUT}] (RGB in [0, 1]), got "
                             f"{tuple(crops.shape)}; make them with crop_squares().")
        return self.graph(crops)[0].reshape(len(crops), 68, 2)


class RFBDetector(nn.Module):
    """RFB-320 face detector (the network's own prior-box decoding included).

    ``forward(x)``: x float [N, 3, 240, 320], (RGB - 127) / 128 -> (scores [N, K, 2], boxes [N, K, 4] corner
    form in fractions of the image). :meth:`detect` does the resizing, thresholding and NMS for uint8 frames.
    """

    def __init__(self, graph: OnnxGraph):
        super().__init__()
        self.graph = graph.eval()

    def forward(self, x: torch.Tensor):
        return self.graph(x)

    @torch.no_grad()
    def detect(self, images, threshold: float = 0.7, iou: float = 0.3, batch_size: int = 16) -> list:
        """Faces in each frame: a list (one per frame) of float64 arrays [K, 5]: (left, top, right, bottom)
        in pixels of that frame, then the score; best first. ``images``: uint8 [N, H, W, 3] RGB."""
        import cv2

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"detect() takes uint8 RGB frames [N, H, W, 3], got {images.dtype} {images.shape}.")
        n, h, w = images.shape[:3]
        p = next(self.graph.buffers())
        out = []
        for s in range(0, n, batch_size):
            small = np.stack([cv2.resize(im, RFB_INPUT, interpolation=cv2.INTER_LINEAR)
                              for im in images[s:s + batch_size]])
            x = (torch.from_numpy(small).to(p.device).permute(0, 3, 1, 2).float() - 127.0) / 128.0
            scores, boxes = self(x)
            for sc, bx in zip(scores[..., 1].double().cpu().numpy(), boxes.double().cpu().numpy()):
                keep = sc > threshold
                dets = np.concatenate([bx[keep] * [w, h, w, h], sc[keep, None]], axis=1)
                out.append(dets[nms(dets[:, :4], dets[:, 4], iou)])
        return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.3) -> np.ndarray:
    """Greedy non-maximum suppression: indices (int [K], best score first) of boxes [M, 4] (corner form) that
    overlap no higher-scoring kept box by more than ``iou`` (intersection over union)."""
    boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while len(order):
        i, order = order[0], order[1:]
        keep.append(i)
        lt = np.maximum(boxes[i, :2], boxes[order, :2])
        rb = np.minimum(boxes[i, 2:], boxes[order, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        order = order[inter / np.maximum(area[i] + area[order] - inter, 1e-12) <= iou]
    return np.array(keep, np.int64)


def _load(cls, name, path, device, dtype, download):
    m = cls(_graph(name, path, download))
    return m.to(device=device, dtype=dtype) if device is not None or dtype is not None else m


def load_pfld(device=None, dtype=None, *, path=None, download: bool = True) -> PFLD:
    """PFLD as a :class:`PFLD` module on ``device`` / ``dtype`` (default CPU, float32).

    ``path``: an ONNX file to use instead of the registered ``"pfld-68"``; ``download=False`` never touches the
    network (see :func:`weights_path`).
    """
    return _load(PFLD, "pfld-68", path, device, dtype, download)


def load_rfb(device=None, dtype=None, *, path=None, download: bool = True) -> RFBDetector:
    """The RFB-320 face detector as a :class:`RFBDetector` module (same arguments as :func:`load_pfld`)."""
    return _load(RFBDetector, "rfb-320-face-detector", path, device, dtype, download)


# ----------------------------------------------------------------------------------------------- crops


def face_square(boxes, scale: float = PFLD_SCALE_RFB):
    """PFLD's square crop for face boxes: [..., 4] (left, top, right, bottom) pixels -> squares [..., 4] of side
    ``scale`` x the longer box side, centred on the box. numpy arrays or tensors (then differentiable)."""
    b = boxes
    cx, cy = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2
    if isinstance(b, torch.Tensor):
        half = torch.maximum(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]) * (scale / 2)
        return torch.stack([cx - half, cy - half, cx + half, cy + half], -1)
    b = np.asarray(b, np.float64)
    half = np.maximum(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]) * (scale / 2)
    return np.stack([cx - half, cy - half, cx + half, cy + half], -1)


def crop_squares(images: torch.Tensor, squares, size: int = PFLD_INPUT) -> torch.Tensor:
    """Resample square regions of images: float [N, C, H, W] -> [N, C, size, size], differentiable.

    ``squares``: [N, 4] or [4] (left, top, right, bottom) pixels, outer edges of the crop (any real values; outside
    the image reads 0). Bilinear sampling; when the crop shrinks the image by k >= 2 times, the image is first
    averaged over k x k blocks (so small crops of large frames are not aliased). Squares given on the host (numpy,
    lists, CPU tensors) are checked there: on a GPU nothing waits for it; squares on the GPU are read back.
    """
    return _crop(images, *_squares(images, squares, size), size)


def _squares(images, squares, size):
    """(squares [N, 4] in images' dtype on its device, box-filter factor k) for :func:`crop_squares`, checked."""
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    n = images.shape[0]
    on_host = not (isinstance(squares, torch.Tensor) and squares.device.type != "cpu")
    sq = torch.as_tensor(squares, dtype=images.dtype, device="cpu" if on_host else images.device).reshape(-1, 4)
    if len(sq) == 1 and n > 1:
        sq = sq.expand(n, 4)
    if len(sq) != n:
        raise ValueError(f"got {len(sq)} squares for {n} images")
    side = (sq[:, 2] - sq[:, 0]).detach()
    if not bool((side > 0).all()):
        raise ValueError("every square needs right > left (pixels); got an empty or inverted square")
    k = max(1, int(float(side.min()) / size))
    # a host copy that doesn't wait for the GPU's queued work (the copy from pageable memory is staged at once)
    return sq.to(images.device, non_blocking=True), k


def _crop(images, sq, k, size):
    n = images.shape[0]
    x = images
    if k >= 2:
        x = F.avg_pool2d(x, k, stride=k, ceil_mode=True, count_include_pad=False)
    # output pixel j's centre, in image pixel coordinates, then in the pooled image's
    t = (torch.arange(size, device=images.device, dtype=images.dtype) + 0.5) / size  # [size]
    xs = sq[:, 0:1] + t * (sq[:, 2:3] - sq[:, 0:1])
    ys = sq[:, 1:2] + t * (sq[:, 3:4] - sq[:, 1:2])
    xs, ys = (xs - (k - 1) / 2) / k, (ys - (k - 1) / 2) / k
    hp, wp = x.shape[-2:]
    gx = (xs + 0.5) / wp * 2 - 1
    gy = (ys + 0.5) / hp * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def pfld_landmarks(model: PFLD, images: torch.Tensor, squares) -> torch.Tensor:
    """68 landmarks in image pixels [N, 68, 2] of float images [N, 3, H, W] RGB in [0, 1], differentiable.

    ``squares``: the crops [N, 4] or [4] (left, top, right, bottom) pixels, e.g. :func:`face_square` of a face box
    (host values are checked without waiting for the GPU; see :func:`crop_squares`).
    """
    sq, k = _squares(images, squares, PFLD_INPUT)
    u = model(_crop(images, sq, k, PFLD_INPUT).to(model.dtype)).to(images.dtype)
    lo, side = sq[:, None, :2], (sq[:, 2:] - sq[:, :2])[:, None, :]
    return lo + u * side  # crop units -> pixels (0 = the crop's left / top edge)

