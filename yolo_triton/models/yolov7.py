"""YOLOv7 in plain PyTorch, built from a ``ModelSpec`` layer table.

The network is assembled the way the official ``parse_model`` assembles it (same module order, same channel
arithmetic, same ``model.<i>.…`` state-dict keys), so that official weights map onto it one-to-one. Layer tables:
``yolov7_layers.LAYER_TABLES`` (cfg/deploy/yolov7.yaml, cfg/training/yolov7-tiny.yaml), by ``spec.architecture``.
Only what inference needs is here: no loss, no training-time augmentation.

Public API:

* :func:`build_model` — a :class:`YoloModel` from a spec (parameters left at their PyTorch defaults);
* :func:`init_random_weights` — deterministic, seeded, *well-scaled* random weights (for tests and for a
  pipeline that has to run before real weights exist; logs a loud warning);
* :func:`load_weights` — our state-dict files and official YOLOv7 / yolov7-tiny ``.pt`` checkpoints (read without the
  official code by :mod:`yolo_triton.models.checkpoint`); :func:`save_weights` — plain state-dict files;
* :meth:`YoloModel.fuse` — Conv+BN folding, RepConv re-parameterisation and implicit-knowledge folding.

``YoloModel.forward`` returns the official ``export.py --grid`` layout: ``[N, K, 5 + nc]`` with
``cx, cy, w, h`` in input pixels, objectness and per-class scores, all after the sigmoid.
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..specs import SPECS, ModelSpec
from .checkpoint import CheckpointError, load_official_checkpoint
from .yolov7_layers import LAYER_TABLES

LOGGER = logging.getLogger("yolo_triton")

RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: boxes from this model are meaningless"

# Official YOLOv7 sets every BatchNorm2d to these (utils/torch_utils.py: initialize_weights); eps matters for
# inference with trained weights, momentum only for training.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x`` (the official channel rounding)."""
    return int(math.ceil(x / divisor) * divisor)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def _fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))`` for a bias-free conv with ``weight`` (eval-mode BN)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


# Activations a layer table may name (official yaml: ``nn.LeakyReLU(0.1)`` as the 6th Conv arg); parsed, never eval'd.
_ACTIVATIONS = {"SiLU": nn.SiLU, "LeakyReLU": nn.LeakyReLU, "ReLU": nn.ReLU, "Identity": nn.Identity}
_ACTIVATION_RE = re.compile(r"^(?:nn\.)?(\w+)\(\s*([-+0-9.eE]*)\s*\)$")


def make_activation(act) -> nn.Module:
    """The official ``Conv`` rule: ``True`` -> SiLU, a module -> itself, anything false -> Identity; plus the yaml's
    strings (``"nn.LeakyReLU(0.1)"``, ``"SiLU()"``), parsed without ``eval``."""
    if act is True:
        return nn.SiLU()
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, str):
        match = _ACTIVATION_RE.match(act.strip())
        if not match or match.group(1) not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; known: "
                             f"{', '.join(f'nn.{name}(...)' for name in _ACTIVATIONS)}")
        cls, arg = _ACTIVATIONS[match.group(1)], match.group(2)
        return cls(float(arg)) if arg else cls()
    if not act:
        return nn.Identity()
    raise ValueError(f"unknown activation {act!r}")


class Conv(nn.Module):
    """Conv2d (no bias, 'same' padding) + BatchNorm2d + activation; after :meth:`fuse` a biased Conv2d + activation.

    Arguments as the official ``Conv(c1, c2, k, s, p, g, act)``: ``act`` True is SiLU (YOLOv7), yolov7-tiny passes
    ``nn.LeakyReLU(0.1)`` (see :func:`make_activation`).
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: Optional[int] = None, g: int = 1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, padding=k // 2 if p is None else p, groups=g, bias=False)
        self.bn = _bn(c2)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "bn"):
            return self.act(self.bn(self.conv(x)))
        return self.act(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if not hasattr(self, "bn"):
            return  # already fused
        weight, bias = _fold_bn(self.conv.weight, self.bn)
        conv = self.conv
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          groups=conv.groups, bias=True).to(weight.device)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.conv = fused
        del self.bn


class MP(nn.Module):
    """2×2 max-pool with stride 2."""

    def __init__(self, k: int = 2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SP(nn.Module):
    """Max-pool with stride 1 and 'same' padding (yolov7-tiny's SPP branches: ``SP`` 5, 9, 13)."""

    def __init__(self, k: int = 3, s: int = 1):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class Concat(nn.Module):
    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class SPPCSPC(nn.Module):
    """CSP block around a spatial pyramid pool (max-pools 5, 9, 13 with stride 1)."""

    def __init__(self, c1: int, c2: int, e: float = 0.5, k: Sequence[int] = (5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        y2 = self.cv2(x)
        return self.cv7(torch.cat((y1, y2), 1))


class RepConv(nn.Module):
    """RepVGG-style block: SiLU(3×3 conv+BN + 1×1 conv+BN [+ BN identity]); :meth:`fuse` makes it one conv."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1):
        super().__init__()
        if k % 2 != 1:
            raise ValueError(f"RepConv needs an odd kernel size, got {k}")
        self.act = nn.SiLU()
        self.rbr_identity = _bn(c1) if c1 == c2 and s == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, padding=k // 2, bias=False), _bn(c2))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, padding=0, bias=False), _bn(c2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "rbr_reparam"):
            return self.act(self.rbr_reparam(x))
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return self.act(y)

    @torch.no_grad()
    def fuse(self) -> None:
        if hasattr(self, "rbr_reparam"):
            return  # already fused
        dense_conv = self.rbr_dense[0]
        k = dense_conv.kernel_size[0]
        weight, bias = _fold_bn(dense_conv.weight, self.rbr_dense[1])
        # The 1×1 branch is a k×k kernel that is zero except at the centre (its padding is 0, the dense one k//2).
        w1, b1 = _fold_bn(self.rbr_1x1[0].weight, self.rbr_1x1[1])
        weight = weight + nn.functional.pad(w1, [k // 2] * 4)
        bias = bias + b1
        if self.rbr_identity is not None:
            # The identity is a k×k kernel with a 1 at the centre of channel i -> output i.
            c = dense_conv.in_channels
            eye = torch.zeros_like(weight)
            eye[torch.arange(c), torch.arange(c), k // 2, k // 2] = 1.0
            wi, bi = _fold_bn(eye, self.rbr_identity)
            weight = weight + wi
            bias = bias + bi
        reparam = nn.Conv2d(dense_conv.in_channels, dense_conv.out_channels, k, dense_conv.stride,
                            padding=k // 2, bias=True).to(weight.device)
        reparam.weight.copy_(weight)
        reparam.bias.copy_(bias)
        self.rbr_reparam = reparam
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity


class _Implicit(nn.Module):
    """A learned per-channel tensor (1, C, 1, 1) of YOLOv7's head, drawn around ``mean``; subclasses say how it acts."""

    mean = 0.0

    def __init__(self, channel: int, std: float = 0.02):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=self.mean, std=std)


class ImplicitA(_Implicit):
    """Learned per-channel offset added to the input of a head conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit + x


class ImplicitM(_Implicit):
    """Learned per-channel factor multiplied onto the output of a head conv."""

    mean = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit * x


class IDetect(nn.Module):
    """Detection head with implicit knowledge; decodes to ``[N, K, no]`` (boxes in input pixels)."""

    symbolic_grid = False  # set for an ONNX export with dynamic height and width

    def __init__(self, nc: int, anchors: Sequence[Sequence[float]], ch: Sequence[int], strides: Sequence[int]):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        if len(ch) != self.nl or len(strides) != self.nl:
            raise ValueError(f"IDetect: {self.nl} anchor levels, {len(ch)} inputs, {len(strides)} strides")
        self.stride: Tuple[int, ...] = tuple(int(s) for s in strides)  # plain attribute, as official (not saved)
        a = torch.tensor(anchors, dtype=torch.float32).reshape(self.nl, -1, 2)  # pixels
        # Official keeps ``anchors`` in stride units and ``anchor_grid`` in pixels; both are saved buffers.
        self.register_buffer("anchors", a / torch.tensor(self.stride, dtype=torch.float32).reshape(-1, 1, 1))
        self.register_buffer("anchor_grid", a.clone().reshape(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.ia = nn.ModuleList(ImplicitA(c) for c in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)
        self.fused = False

    @staticmethod
    def _make_grid(nx: int, ny: int, device: torch.device) -> torch.Tensor:
        yv, xv = torch.meshgrid(torch.arange(ny, device=device), torch.arange(nx, device=device), indexing="ij")
        return torch.stack((xv, yv), 2).reshape(1, 1, ny, nx, 2).float()

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        z = []
        for i in range(self.nl):
            x = xs[i]
            if self.fused:
                x = self.m[i](x)
            else:
                x = self.im[i](self.m[i](self.ia[i](x)))
            # the grid follows the feature map: constants fixed by the input size, or symbolic in an ONNX export with
            # dynamic height and width (rectangular inference: ``symbolic_grid``)
            ny, nx = (x.shape[2], x.shape[3]) if self.symbolic_grid else (int(x.shape[2]), int(x.shape[3]))
            # (bs, na*no, ny, nx) -> (bs, na, ny, nx, no); -1 keeps the batch dimension dynamic in ONNX.
            x = x.reshape(-1, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            y = x.sigmoid()
            grid = self._make_grid(nx, ny, y.device).to(y.dtype)
            xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * self.stride[i]
            wh = (y[..., 2:4] * 2.0) ** 2 * self.anchor_grid[i]
            y = torch.cat((xy, wh, y[..., 4:]), -1)
            z.append(y.reshape(-1, self.na * ny * nx, self.no))
        return torch.cat(z, 1)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold ImplicitA into each conv's bias and ImplicitM into its weight and bias."""
        if self.fused:
            return
        for conv, ia, im in zip(self.m, self.ia, self.im):
            c_out, c_in = conv.weight.shape[:2]
            # conv(x + a) = W x + (W a + b)
            conv.bias.add_(conv.weight.reshape(c_out, c_in) @ ia.implicit.reshape(c_in))
            # m * (W x + b) = (m W) x + m b
            scale = im.implicit.reshape(c_out)
            conv.bias.mul_(scale)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        del self.ia, self.im
        self.fused = True


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class YoloModel(nn.Module):
    """A layer table turned into modules; ``forward(images) -> [N, K, 5 + nc]``."""

    def __init__(self, spec: ModelSpec, layers: List[nn.Module], save: Sequence[int]):
        super().__init__()
        self.spec = spec
        self.model = nn.Sequential(*layers)
        self.save = sorted(set(save))  # indices whose outputs later layers read
        self.stride = torch.tensor(spec.strides, dtype=torch.float32)  # plain attribute, as official

    @property
    def detect(self) -> IDetect:
        return self.model[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        outputs: List[Optional[torch.Tensor]] = []
        for m in self.model:
            if m.f != -1:
                x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
            x = m(x)
            outputs.append(x if m.i in self.save else None)
        return x

    @torch.no_grad()
    def fuse(self) -> "YoloModel":
        """Fold BatchNorm, RepConv branches and implicit knowledge into plain biased convs (inference only)."""
        for module in list(self.modules()):  # fuse() replaces children: do not walk a changing tree
            if isinstance(module, (Conv, RepConv, IDetect)):
                module.fuse()
        return self

    @property
    def is_fused(self) -> bool:
        return self.detect.fused


def build_model(spec: ModelSpec) -> YoloModel:
    """Build the network of ``spec`` as the official ``parse_model`` does (parameters at PyTorch defaults).

    ``spec.depth_multiple`` has no effect on this table: every row has a repeat count of 1, which the official
    ``parse_model`` never scales.
    """
    spec.validate()
    gw = spec.width_multiple
    ch: List[int] = [3]  # output channels per layer; starts with the image channels for layer 0's "-1"
    layers: List[nn.Module] = []
    save: List[int] = []
    if spec.architecture not in LAYER_TABLES:
        raise ValueError(f"{spec.name}: no YOLOv7 layer table {spec.architecture!r}; known: {', '.join(LAYER_TABLES)}")
    for i, (f, name, args) in enumerate(LAYER_TABLES[spec.architecture]):
        args = tuple(args)
        if name in ("Conv", "RepConv"):
            c1, c2 = ch[f], make_divisible(args[0] * gw, 8)
            m = (Conv if name == "Conv" else RepConv)(c1, c2, *args[1:])
        elif name == "SP":
            c2 = ch[f]
            m = SP(*args)
        elif name == "SPPCSPC":
            c1, c2 = ch[f], make_divisible(args[0] * gw, 8)
            m = SPPCSPC(c1, c2, *args[1:])
        elif name == "Concat":
            c2 = sum(ch[x] for x in f)
            m = Concat(*args)
        elif name == "MP":
            c2 = ch[f]
            m = MP(*args)
        elif name in ("Upsample", "nn.Upsample"):
            c2 = ch[f]
            if len(args) <= 1:  # (scale,) as our YOLOV7 table writes it
                m = nn.Upsample(scale_factor=args[0] if args else 2, mode="nearest")
            else:  # the official yaml's nn.Upsample args: (size, scale_factor, mode)
                m = nn.Upsample(*args)
        elif name == "IDetect":
            m = IDetect(spec.num_classes, spec.anchors, [ch[x] for x in f], spec.strides)
            c2 = m.no * m.na
        else:
            raise ValueError(f"{spec.name}: layer {i}: unknown module {name!r}")
        m.i, m.f, m.type = i, f, name
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m)
        if i == 0:
            ch = []
        ch.append(c2)
    if not isinstance(layers[-1], IDetect):
        raise ValueError(f"{spec.name}: the last layer must be IDetect, got {type(layers[-1]).__name__}")
    return YoloModel(spec, layers, save)


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def _normal(gen: torch.Generator, shape, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    return torch.empty(shape).normal_(mean, std, generator=gen)


def _uniform(gen: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return torch.empty(shape).uniform_(low, high, generator=gen)


# Random weights (see init_random_weights): BatchNorm gamma range; the RMS every BN brings its input to; the
# calibration images' size (fixed, so that a seed's weights do not depend on the serving input size) and their
# share of white noise (vs. smooth noise).
BN_GAMMA_RANGE = (0.7, 1.3)
BN_TARGET_STD = 8.0
CALIBRATION_SIZE = (256, 256)
CALIBRATION_WHITE_SHARE = (1.0, 0.0)


def init_conv_or_bn(module: nn.Module, gen: torch.Generator, conv_std: Optional[float] = None) -> bool:
    """Seeded init of one conv (He-normal, or ``conv_std``; small biases) or BatchNorm (gamma in
    BN_GAMMA_RANGE, small beta). Returns False for any other module, which it leaves alone."""
    if isinstance(module, nn.Conv2d):
        std = math.sqrt(2.0 / module.weight[0].numel()) if conv_std is None else conv_std
        module.weight.copy_(_normal(gen, module.weight.shape, 0.0, std))
        if module.bias is not None:
            module.bias.copy_(_normal(gen, module.bias.shape, 0.0, 0.05))
        return True
    if isinstance(module, nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(_uniform(gen, (c,), *BN_GAMMA_RANGE))
        module.bias.copy_(_normal(gen, (c,), 0.0, 0.1))
        return True
    return False


@torch.no_grad()
def init_random_weights(model: YoloModel, seed: int, head_std: float = 2.5) -> YoloModel:
    """Seeded, deterministic random weights that keep activations in a sane range; logs a loud warning.

    Everything is drawn from ``torch.Generator().manual_seed(seed)`` in module order, so the same seed gives the
    same weights (bit-identical on one platform; the float32 calibration pass below may round differently in the
    last bits on another CPU kind). They do not depend on the spec's input size.

    * convs: He init ``N(0, 2 / fan_in)``; BatchNorm gamma ``U(0.7, 1.3)``, beta ``N(0, 0.1)``;
    * BatchNorm running statistics, set by :func:`_calibrate_batchnorm` from one eval pass over seeded noise
      images: var = (layer RMS / BN_TARGET_STD)² × U(0.8, 1.25) per channel, mean = N(0, 0.2) × layer RMS per
      channel. Non-trivial (mean ≠ 0, var ≠ 1), so BN folding is really exercised, and every layer's
      pre-activation sits at an RMS of ~BN_TARGET_STD, where SiLU acts like ReLU: a He-initialised ReLU network
      keeps the scale of *any* input, so activations neither vanish nor blow up over ~100 layers, whatever the
      image (per-channel statistics, or an O(1) scale where SiLU is not homogeneous, were measured to blow up
      by 10-10^4 on inputs unlike the calibration batch);
    * ImplicitA ``N(0, 0.1 · BN_TARGET_STD)``, ImplicitM ``N(1, 0.1)`` (wider than the official 0.02, to
      exercise their folding);
    * head convs: std ``head_std / (BN_TARGET_STD · sqrt(fan_in))`` (logits vary by ~``head_std``), bias
      ``N(0, 0.05)`` plus the official ``_initialize_biases`` priors (objectness ``log(8 / (640 / s)²)``, classes
      ``log(0.6 / (nc - 0.99))``). With the default, noise images were measured to give 0 to a few hundred
      (of 25,200 at 640×640) candidates per image with objectness × class > 0.25, not thousands.
    """
    if model.is_fused:
        raise ValueError("init_random_weights needs an unfused model (BatchNorm statistics are calibrated)")
    gen = torch.Generator().manual_seed(int(seed))
    detect = model.detect
    head_convs = set(id(m) for m in detect.m)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and id(module) in head_convs:
            # its input has an RMS of about BN_TARGET_STD (see _calibrate_batchnorm)
            init_conv_or_bn(module, gen, conv_std=head_std / (BN_TARGET_STD * math.sqrt(module.weight[0].numel())))
        elif init_conv_or_bn(module, gen):
            pass
        elif isinstance(module, ImplicitA):
            module.implicit.copy_(_normal(gen, module.implicit.shape, 0.0, 0.1 * BN_TARGET_STD))
        elif isinstance(module, ImplicitM):
            module.implicit.copy_(_normal(gen, module.implicit.shape, 1.0, 0.1))
    # Prior biases (official _initialize_biases): ~8 objects per 640×640 image, class probability ~0.6/nc.
    for conv, s in zip(detect.m, detect.stride):
        b = conv.bias.reshape(detect.na, -1)
        b[:, 4] += math.log(8 / (640 / s) ** 2)
        b[:, 5:] += math.log(0.6 / (detect.nc - 0.99))
    _calibrate_batchnorm(model, gen)
    LOGGER.warning("%s (model %s, seed %d): do not serve these results as detections",
                   RANDOM_WEIGHTS_WARNING, model.spec.name, int(seed))
    return model


def _calibration_images(gen: torch.Generator, height: int, width: int) -> torch.Tensor:
    """Seeded noise images in 0..1, from white noise to smooth (1/16-resolution, upsampled) noise."""
    n = len(CALIBRATION_WHITE_SHARE)
    white = _uniform(gen, (n, 3, height, width), 0.0, 1.0)
    coarse = _uniform(gen, (n, 3, max(height // 16, 1), max(width // 16, 1)), 0.0, 1.0)
    smooth = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    share = torch.tensor(CALIBRATION_WHITE_SHARE).reshape(n, 1, 1, 1)
    return share * white + (1.0 - share) * smooth


def _calibrate_batchnorm(model: YoloModel, gen: torch.Generator) -> None:
    """Set each BN's running stats from the RMS of its actual input on seeded noise images.

    One number per layer (the RMS over channels, positions and images) sets the scale; the per-channel
    spread is random. Per-channel calibrated statistics were tried and rejected: channels that happen to be
    near-constant on the calibration batch get divided by a tiny std, and errors in the calibrated means add up
    layer after layer, so the network blew up on other images.
    """
    images = _calibration_images(gen, *CALIBRATION_SIZE)

    def set_stats(bn: nn.BatchNorm2d, inputs) -> None:
        c = bn.num_features
        rms = inputs[0].square().mean().sqrt()  # one number per layer, from all channels and positions
        bn.running_mean.copy_(_normal(gen, (c,), 0.0, 0.2) * rms)
        bn.running_var.copy_((rms / BN_TARGET_STD) ** 2 * _uniform(gen, (c,), 0.8, 1.25))

    # Pre-hooks fire in forward order, so each BN is set before its (eval-mode) forward uses the stats.
    handles = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    was_training = model.training
    try:
        model.eval()
        model(images.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def save_weights(model: YoloModel, path: Union[str, os.PathLike]) -> None:
    """Save ``model.state_dict()`` as a plain file that :func:`load_weights` reads back."""
    torch.save(model.state_dict(), os.fspath(path))


def spec_of_checkpoint(spec: ModelSpec, info: dict, take_names: bool = True) -> ModelSpec:
    """``spec`` as an official checkpoint says its network is: the width and depth multiples and anchors of its own
    yaml, and (``take_names``) its class names (a model trained on another dataset). The layer table stays the
    spec's: a checkpoint of another architecture still fails to load, with a hint. Our state-dict files carry
    neither: ``spec`` as is."""
    yaml = info.get("yaml") if isinstance(info.get("yaml"), dict) else {}
    changes = {key: float(yaml[key]) for key in ("width_multiple", "depth_multiple")
               if isinstance(yaml.get(key), (int, float))}
    anchors = yaml.get("anchors")
    if isinstance(anchors, (list, tuple)) and all(isinstance(level, (list, tuple)) for level in anchors):
        changes["anchors"] = tuple(tuple(int(v) for v in level) for level in anchors)
    names = info.get("names")
    if take_names and names and (not isinstance(info.get("nc"), int) or len(names) == info["nc"]):
        changes["labels"] = tuple(str(n) for n in names)
    return spec.with_overrides(**changes) if changes else spec


def model_from_weights(spec: ModelSpec, path: Union[str, os.PathLike], take_names: bool = True) -> YoloModel:
    """The network of ``spec`` fitted to an official checkpoint (:func:`spec_of_checkpoint`, see ``model.spec``) or
    to our state dict, with its weights loaded (as :func:`load_weights`)."""
    state, info = load_official_checkpoint(path)
    model = build_model(spec_of_checkpoint(spec, info, take_names))
    _load_state(model, state, info)
    return model


def load_weights(model: YoloModel, path: Union[str, os.PathLike]) -> YoloModel:
    """Load a weights file into ``model``, strictly (every tensor of the model, each of the right shape).

    Accepted (read by :func:`yolo_triton.models.checkpoint.load_official_checkpoint`):

    * our plain state dicts (:func:`save_weights`), unfused or fused;
    * official YOLOv7 / yolov7-tiny ``.pt`` checkpoints (``{'model': <pickled Model, FP16>, ...}``, or ``'ema'``),
      as ``train.py`` saves them (RepConv ``rbr_dense``/``rbr_1x1``, IDetect ``ia``/``im``), after the official
      ``Model.fuse()`` (``rbr_reparam``, Conv without BN, ImplicitA/M folded) or from the re-parameterisation
      notebook (``Detect`` head without ``ia``/``im``). **They are unpickled**: only load files you trust (the
      unpickler is restricted, see :mod:`yolo_triton.models.checkpoint`).

    Whatever the checkpoint has already fused (per module: Conv+BN, RepConv, the head's implicit knowledge), the
    same module of ``model`` is fused first, then the tensors are loaded; BatchNorm ``eps`` is taken from the
    checkpoint when it records one. A key or shape mismatch raises :class:`CheckpointError` naming the first
    differences, with a hint when another spec would fit (e.g. ``--model yolov7_tiny``) or the class count differs;
    modules fused to match the checkpoint stay fused then, so build a fresh model to try again.
    """
    state, info = load_official_checkpoint(path)
    _load_state(model, state, info)
    return model


_LAYER_KEY = re.compile(r"^model\.(\d+)\.")


def _fuse_like_checkpoint(model: YoloModel, state: dict) -> None:
    """Fuse each module of ``model`` that the checkpoint holds in fused form."""
    for name, module in list(model.named_modules()):
        p = f"{name}."
        if isinstance(module, Conv) and hasattr(module, "bn"):
            if f"{p}bn.weight" not in state and f"{p}conv.bias" in state:
                module.fuse()
        elif isinstance(module, RepConv) and not hasattr(module, "rbr_reparam"):
            if f"{p}rbr_reparam.weight" in state:
                module.fuse()
        elif isinstance(module, IDetect) and not module.fused:
            if f"{p}m.0.weight" in state and f"{p}ia.0.implicit" not in state:
                module.fuse()


def _classes_message(nc: int, names, spec: ModelSpec) -> str:
    listed = f" ({', '.join(map(str, names[:5]))}{', …' if len(names) > 5 else ''})" if names else ""
    return (f"the checkpoint detects {nc} classes{listed}, spec {spec.name} has {spec.num_classes} labels: give the "
            "spec the checkpoint's labels (spec.with_overrides(labels=...))")


def _mismatch_hints(model: YoloModel, state: dict, info: dict) -> List[str]:
    spec, hints = model.spec, []
    layers = {int(m.group(1)) for m in map(_LAYER_KEY.match, state) if m}
    if not layers:
        what = f" (the checkpoint's model is a {info['model_class']})" if "model_class" in info else ""
        return [f"no model.<i>.… keys: not a YOLOv7 network{what}"]
    n_ckpt = info.get("num_layers") or (max(layers) + 1 if layers else 0)
    if n_ckpt and n_ckpt != len(model.model):
        fits = [s.name for s in SPECS.values() if s.family == "yolov7" and len(LAYER_TABLES[s.architecture]) == n_ckpt]
        hint = f"the checkpoint has {n_ckpt} layers, model {spec.name} has {len(model.model)}"
        if fits:
            pretty = " or ".join(f"a {n.replace('_', '-')} checkpoint? use --model {n}" for n in fits)
            hint += f": is this {pretty}"
        hints.append(hint)
    head = f"model.{len(model.model) - 1}.m.0.weight"
    if head in state and n_ckpt == len(model.model):
        no = state[head].shape[0] // model.detect.na
        if no - 5 != model.detect.nc:
            hints.append(_classes_message(no - 5, info.get("names"), spec))
    first = "model.0.conv.weight"
    if first in state and first in model.state_dict():
        c_ckpt, c_model = state[first].shape[0], model.state_dict()[first].shape[0]
        if c_ckpt != c_model and n_ckpt == len(model.model):
            hints.append(f"layer 0 has {c_ckpt} channels in the checkpoint, {c_model} in the model: another "
                         f"width_multiple (model: {spec.width_multiple})?")
    return hints


def _load_state(model: YoloModel, state: dict, info: dict) -> None:
    source = info.get("path", "state dict")
    nc = info.get("nc")
    if isinstance(nc, int) and nc != model.spec.num_classes:
        raise CheckpointError(f"{source}: {_classes_message(nc, info.get('names'), model.spec)}")
    _fuse_like_checkpoint(model, state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {list(state[k].shape)} vs model {list(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        fused_model = [k for k in missing if ".bn." in k or "rbr_dense" in k or ".ia." in k]
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"{len(items)} {label}: {', '.join(items[:4])}{', …' if len(items) > 4 else ''}")
        hints = _mismatch_hints(model, state, info)
        if not fused_model and any(".bn." in k or "rbr_dense" in k for k in unexpected):
            hints.append("the model is already fused and the checkpoint is not: load weights before fuse()")
        raise CheckpointError(f"{source} does not fit model {model.spec.name}: " + "; ".join(parts)
                              + "".join(f"\nHint: {h}" for h in hints))
    eps = info.get("bn_eps") or {}
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and name in eps and eps[name] != module.eps:
            module.eps = eps[name]
    model.load_state_dict(state, strict=True)
    names = info.get("names")
    if names and tuple(names) != tuple(model.spec.labels):
        LOGGER.warning("%s: the checkpoint's class names differ from spec %s's labels (first: %r vs %r); the spec's "
                       "labels are served", source, model.spec.name, names[0], model.spec.labels[0])
    spec_anchors = torch.tensor(model.spec.anchors, dtype=torch.float32).reshape(model.detect.anchor_grid.shape)
    if not torch.allclose(model.detect.anchor_grid.float(), spec_anchors, atol=0.5):
        LOGGER.warning("%s: the checkpoint's anchors %s differ from spec %s's %s; the model decodes with the "
                       "checkpoint's", source, model.detect.anchor_grid.reshape(len(model.spec.anchors), -1).tolist(),
                       model.spec.name, [list(a) for a in model.spec.anchors])
