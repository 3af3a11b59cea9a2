"""BiSeNet face parsing (19 CelebAMask-HQ classes) in plain PyTorch, loading ``79999_iter.pth`` as released.

The network is the one of zllrunning/face-parsing.PyTorch (the parser the Video2StyleGAN paper uses): a
ResNet-18 context path with attention-refinement modules, no separate spatial path (the ResNet's 1/8 feature
takes its place), a feature-fusion module and a main 19-class head, plus two auxiliary heads used only in
training. It was written here from the architecture, not copied; the test fixture
``tests/fixtures/bisenet_face_parsing`` checks it against the public code's outputs.

* :func:`load_bisenet` -> an eval-mode :class:`BiSeNet` whose ``forward(x)`` takes ImageNet-normalised RGB
  ``[N, 3, H, W]`` and returns the main logits ``[N, 19, H, W]``.
* :func:`parse` -> per-pixel labels ``uint8 [N, H, W]`` for ``uint8 [N, H, W, 3]`` RGB images.
* :data:`CLASS_NAMES`, :data:`REGION_CLASSES`, :func:`labels_to_regions` -> the face regions of
  :mod:`v2s_nb.face.regions` (``'eyes'``, ``'nose'``, ``'mouth'``, ``'rest'``).

Class-to-region decision: ``eyes`` = {4 l_eye, 5 r_eye} only. Brows (2, 3) are *not* eyes (the paper's region
is the eyes, and brows move with expressions of their own); eyeglasses (6) are not eyes either (in
CelebAMask-HQ the glasses label is painted over the eyes, so with glasses the eye classes shrink to what shows
through). ``nose`` = {10}; ``mouth`` = {11 mouth interior, 12 upper lip, 13 lower lip}; everything else
(background, skin, brows, glasses, ears, neck, cloth, hair, hat) is ``rest``. Pass ``region_classes=`` to
change it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BiSeNet", "load_bisenet", "parse", "bisenet_available", "CLASS_NAMES", "REGION_CLASSES",
    "labels_to_regions", "IMAGENET_MEAN", "IMAGENET_STD", "PARSE_SIZE",
]

#: The 19 classes, index = label (CelebAMask-HQ attribute order of the public ``prepropess_data.py``).
CLASS_NAMES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
               "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")

#: Classes that make up each face region; every other class is ``'rest'`` (see the module docstring).
REGION_CLASSES: dict[str, tuple[int, ...]] = {"eyes": (4, 5), "nose": (10,), "mouth": (11, 12, 13)}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Side the public test script resizes images to before parsing.
PARSE_SIZE = 512


# ----------------------------------------------------------------------------------------------- network


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, ks=3, stride=1, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        r = F.relu(self.bn1(self.conv1(x)))
        r = self.bn2(self.conv2(r))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + r)


class ResNet18(nn.Module):
    """ResNet-18 trunk without its classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


def _global_avg(x):
    return F.avg_pool2d(x, x.shape[2:])


class AttentionRefinement(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3, 1, 1)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(_global_avg(feat))))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        # Legacy 'nearest' to the explicit size of the finer map (what the checkpoint was trained with).
        avg_up = F.interpolate(self.conv_avg(_global_avg(feat32)), size=feat32.shape[2:], mode="nearest")
        feat32_up = F.interpolate(self.arm32(feat32) + avg_up, size=feat16.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(feat32_up)
        feat16_up = F.interpolate(self.arm16(feat16) + feat32_up, size=feat8.shape[2:], mode="nearest")
        feat16_up = self.conv_head16(feat16_up)
        return feat8, feat16_up, feat32_up


class FeatureFusion(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_avg(feat)))))
        return feat * atten + feat


class OutputHead(nn.Module):
    def __init__(self, cin, cmid, n_classes):
        super().__init__()
        self.conv = ConvBNReLU(cin, cmid, 3, 1, 1)
        self.conv_out = nn.Conv2d(cmid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face-parsing BiSeNet with the state-dict layout of ``79999_iter.pth``.

    ``forward(x)``: ImageNet-normalised RGB float ``[N, 3, H, W]`` (no normalisation happens inside) ->
    main-head logits ``[N, 19, H, W]`` (bilinear, ``align_corners=True`` back to the input size).
    :meth:`forward_all` also returns the two auxiliary heads (training-only in the public code).
    """

    def __init__(self, n_classes: int = 19):
        super().__init__()
        self.n_classes = n_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def _up(self, x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def forward(self, x):
        size = x.shape[2:]
        feat8, feat_cp8, _ = self.cp(x)
        return self._up(self.conv_out(self.ffm(feat8, feat_cp8)), size)

    def forward_all(self, x):
        """``(out, out16, out32)`` as the public ``forward`` returns them."""
        size = x.shape[2:]
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        out = self._up(self.conv_out(self.ffm(feat8, feat_cp8)), size)
        return out, self._up(self.conv_out16(feat_cp8), size), self._up(self.conv_out32(feat_cp16), size)


# ----------------------------------------------------------------------------------------------- loading


def _unwrap(obj) -> dict[str, torch.Tensor]:
    """The tensor dict inside what ``torch.load`` returned (a bare state dict, or one under a common key)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "net"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key])
        return dict(obj)
    raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "net."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict_into(net: BiSeNet, sd: Mapping[str, torch.Tensor]) -> BiSeNet:
    """Load a checkpoint state dict (``module.`` prefix stripped) into ``net``; clear error on any mismatch.

    ``num_batches_tracked`` entries may be present or absent, and so may the auxiliary heads
    (``conv_out16.*``, ``conv_out32.*``). Every other parameter must be there with its shape.
    """
    sd = _strip_prefix(_unwrap(sd))
    own = net.state_dict()
    unexpected = sorted(k for k in sd if k not in own)
    if unexpected:
        raise ValueError(f"not a face-parsing BiSeNet checkpoint: {len(unexpected)} unknown key(s), e.g. "
                         f"{unexpected[:5]} (expected keys like 'cp.resnet.conv1.weight').")
    optional = ("num_batches_tracked",)
    aux = ("conv_out16.", "conv_out32.")
    missing = sorted(k for k in own if k not in sd and not k.endswith(optional) and not k.startswith(aux))
    if missing:
        raise ValueError(f"incomplete BiSeNet checkpoint: {len(missing)} key(s) missing, e.g. {missing[:5]}.")
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"BiSeNet checkpoint shapes differ (key, file, expected): {bad[:5]}")
    net.load_state_dict(sd, strict=False)
    return net


def load_bisenet(path=None, device=None) -> BiSeNet:
    """The face parser in eval mode, on ``device`` (``None``: CPU), gradients off.

    ``path``: a ``79999_iter.pth``-style state dict (the released file is torch's old non-zip format with
    ``cuda:0`` storages; it is read with ``map_location`` and ``weights_only=True``, so no code in it runs).
    ``None`` fetches ``'bisenet-face-parsing'`` through :func:`v2s_nb.weights.fetch` (downloaded on first use,
    SHA-256 checked; raises :class:`~v2s_nb.weights.WeightsUnavailableError` when offline and not cached).
    """
    if path is None:
        from ..weights import fetch
        path = fetch("bisenet-face-parsing")
    device = torch.device(device or "cpu")
    sd = torch.load(os.fspath(path), map_location=device, weights_only=True)
    net = load_state_dict_into(BiSeNet(), sd)
    net.source = str(path)
    return net.to(device).eval().requires_grad_(False)


def bisenet_available() -> bool:
    """True when the BiSeNet checkpoint is already on this machine, verified, wherever :func:`load_bisenet`
    finds it: a folder of ``$V2S_NB_WEIGHTS_DIR`` or the weights cache (no network is touched)."""
    from ..weights import WeightsChecksumError, WeightsUnavailableError, fetch

    try:  # fetch's own lookup and checks, so this never disagrees with load_bisenet
        fetch("bisenet-face-parsing", download=False, progress=False)
    except (WeightsUnavailableError, WeightsChecksumError):
        return False
    return True


# ----------------------------------------------------------------------------------------------- parsing


def _as_images(images) -> np.ndarray:
    """Pictures (uint8, or float in [0, 1], channel-last; one or a batch) -> uint8 RGB [N, H, W, 3]."""
    from ..video import as_rgb_uint8

    return as_rgb_uint8(images, allow_single_image=True, name="images")


def preprocess(images, size: int = PARSE_SIZE) -> torch.Tensor:
    """uint8 RGB ``[N, H, W, 3]`` -> ImageNet-normalised float ``[N, 3, size, size]`` (PIL bilinear resize, as
    the public test script does)."""
    from PIL import Image

    arr = _as_images(images)
    out = np.empty((len(arr), size, size, 3), np.float32)
    for i, im in enumerate(arr):
        if im.shape[:2] != (size, size):
            im = np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
        out[i] = im
    x = torch.from_numpy(out).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def parse(images, net: BiSeNet | None = None, *, size: int = PARSE_SIZE, batch_size: int = 4,
          device=None) -> np.ndarray:
    """Per-pixel class labels ``uint8 [N, H, W]`` (at the images' own size) for RGB images ``[N, H, W, 3]``.

    Each image is resized to ``size`` x ``size`` (512, the public code's choice), normalised with ImageNet
    statistics and parsed; the logits are resized back bilinearly to H x W before the argmax. ``net``: a
    loaded parser (default: :func:`load_bisenet`); ``device`` defaults to the net's.
    """
    arr = _as_images(images)
    if net is None:
        net = load_bisenet(device=device)
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    h, w = arr.shape[1:3]
    labels = np.empty((len(arr), h, w), np.uint8)
    for s in range(0, len(arr), batch_size):
        x = preprocess(arr[s:s + batch_size], size).to(dev)
        logits = net(x)
        if (h, w) != tuple(logits.shape[2:]):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        labels[s:s + batch_size] = logits.argmax(1).to(torch.uint8).cpu().numpy()
    return labels


def labels_to_regions(labels, region_classes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Label maps ``[N, H, W]`` -> ``{'eyes', 'nose', 'mouth', 'rest'}`` bool ``[N, H, W]`` (disjoint; ``rest``
    is everything not in another region). ``region_classes`` overrides :data:`REGION_CLASSES`."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    classes = dict(REGION_CLASSES if region_classes is None else region_classes)
    out, taken = {}, np.zeros(labels.shape, bool)
    for name, cls in classes.items():
        m = np.isin(labels, np.asarray(cls, dtype=labels.dtype)) & ~taken
        out[name] = m
        taken |= m
    out["rest"] = ~taken
    return out
