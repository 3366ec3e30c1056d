"""YOLOv4 / YOLOv4-tiny from darknet: a darknet ``.cfg`` turned into PyTorch, darknet ``.weights`` I/O.

The network is built layer by layer from the cfg's sections, with darknet's semantics (layer indices, route
``groups``/``group_id``, maxpool padding, the ``[yolo]`` decode with ``scale_x_y`` and ``new_coords``), so a
darknet ``.weights`` file maps onto it float by float. Only inference is here: no loss, no training options.

Public API:

* :func:`parse_cfg` — cfg text → list of :class:`Section` (dicts: ``"type"`` plus the options as strings), and
  :func:`builtin_cfg` — yolov4.cfg / yolov4-tiny.cfg generated as text (both in ``darknet_cfg.py``);
* :class:`DarknetModel` — the network of a parsed cfg; ``forward(images) -> [N, K, 5 + nc]``;
* :func:`from_spec` — the model of a ``ModelSpec`` (built-in cfg or a user's file), checked against the spec
  by :func:`check_spec`;
* :func:`load_darknet_weights` / :func:`save_darknet_weights` / :func:`darknet_weight_count` — the darknet
  ``.weights`` format;
* :func:`init_random_weights` — seeded, well-scaled random weights (logs a loud warning);
* :meth:`DarknetModel.fuse` — BatchNorm folded into the convs (inference only).

Every refusal (malformed cfg, unsupported layer or option, weights file of the wrong size, cfg/spec mismatch) is a
:class:`DarknetError`, a ``ValueError``.

``DarknetModel.forward`` returns the layout of our YOLOv7 (official ``export.py --grid``): ``[N, K, 5 + nc]``,
``cx, cy, w, h`` in input pixels, objectness and class scores after the sigmoid. The ``[yolo]`` levels are in
ascending stride order (whatever their order in the cfg), each in (anchor, row, column) order.

Supported sections: ``[net]``/``[network]``, ``[convolutional]``/``[conv]``, ``[route]``, ``[shortcut]``,
``[maxpool]``/``[max]``, ``[upsample]``, ``[yolo]``, and ``[dropout]``, which is the identity at inference (as
in darknet, where it only acts while training). Anything else, or an option value that would change the
result and is not implemented, raises :class:`DarknetError` naming the layer. Options that only matter for
training are ignored (every option of ``[net]`` except width/height/channels; ``[yolo]``'s loss and NMS
settings).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import struct
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..specs import ModelSpec
from .darknet_cfg import (_TRAINING_OPTIONS, _YOLO_TRAINING_OPTIONS, YOLOV4_ANCHORS, YOLOV4_TINY_ANCHORS,  # noqa: F401
                          DarknetError, Section, _Options, _where,
                          builtin_cfg, parse_cfg)
from .yolov7 import RANDOM_WEIGHTS_WARNING, Conv, _calibrate_batchnorm, init_conv_or_bn

LOGGER = logging.getLogger("yolo_triton")

BN_EPS = 1e-5  # darknet: (x - mean) / sqrt(var + .00001f)
LEAKY_SLOPE = 0.1  # darknet's leaky
# Header darknet itself writes today (yolov4.weights has it too): major 0, minor 2, revision 5, then seen as int64.
WEIGHTS_VERSION = (0, 2, 5)

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


class Mish(nn.Module):
    """x · tanh(softplus(x)), written with standard ops (ONNX: Softplus, Tanh, Mul; no custom op). Darknet's
    softplus switches to x above 20, as ``F.softplus``'s default threshold does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.softplus(x))


ACTIVATIONS = {
    "leaky": lambda: nn.LeakyReLU(LEAKY_SLOPE),
    "mish": Mish,
    "linear": nn.Identity,
    "logistic": nn.Sigmoid,
    "relu": nn.ReLU,
    "swish": nn.SiLU,  # x · sigmoid(x); ONNX: Sigmoid, Mul
}


class Convolutional(Conv):
    """[convolutional]: Conv2d (biased unless batch_normalize) → BatchNorm2d (eps 1e-5) → activation.

    YOLOv7's ``Conv`` with darknet's options; its ``forward`` and ``fuse`` (BN folded into a biased conv) apply
    as they are.
    """

    kind = "convolutional"

    def __init__(self, c_in: int, filters: int, size: int, stride: int, padding: int, groups: int,
                 batch_normalize: bool, activation: str):
        nn.Module.__init__(self)
        self.conv = nn.Conv2d(c_in, filters, size, stride, padding, groups=groups, bias=not batch_normalize)
        if batch_normalize:
            self.bn = nn.BatchNorm2d(filters, eps=BN_EPS, momentum=0.01)
        self.batch_normalize = batch_normalize  # as the cfg says; stays True after fuse()
        self.fused = False
        self.activation = activation
        self.act = ACTIVATIONS[activation]()

    @torch.no_grad()
    def fuse(self) -> None:
        if hasattr(self, "bn"):
            super().fuse()
            self.fused = True


class Route(nn.Module):
    """[route]: the listed layers' outputs (a channel group of each with groups/group_id), concatenated."""

    kind = "route"

    def __init__(self, sources: Sequence[int], groups: int = 1, group_id: int = 0):
        super().__init__()
        self.sources = tuple(sources)
        self.groups, self.group_id = groups, group_id

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        if self.groups > 1:
            parts = []
            for x in inputs:
                part = int(x.shape[1]) // self.groups
                parts.append(x[:, self.group_id * part:(self.group_id + 1) * part])
            inputs = parts
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)


class Shortcut(nn.Module):
    """[shortcut]: the previous layer's output plus the ``from`` layers' (same shapes; activation linear)."""

    kind = "shortcut"

    def __init__(self, sources: Sequence[int]):
        super().__init__()
        self.sources = tuple(sources)

    def forward(self, x: torch.Tensor, others: List[torch.Tensor]) -> torch.Tensor:
        for other in others:
            x = x + other
        return x


class MaxPool(nn.Module):
    """[maxpool] with darknet's padding: out = (in + padding - size) // stride + 1, the window starting
    ``padding // 2`` before the first pixel; positions outside the input never win (-inf)."""

    kind = "maxpool"

    def __init__(self, size: int, stride: int, padding: int):
        super().__init__()
        self.size, self.stride, self.padding = size, stride, padding

    def output_size(self, n: int) -> int:
        return (n + self.padding - self.size) // self.stride + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        before = self.padding // 2
        after_h = max(0, (self.output_size(h) - 1) * self.stride + self.size - h - before)
        after_w = max(0, (self.output_size(w) - 1) * self.stride + self.size - w - before)
        if before == after_h == after_w and before <= self.size // 2:  # symmetric: MaxPool's own -inf padding
            return F.max_pool2d(x, self.size, self.stride, padding=before)
        x = F.pad(x, (before, after_w, before, after_h), value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class Upsample(nn.Module):
    """[upsample]: nearest neighbour by ``stride``."""

    kind = "upsample"

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=float(self.stride), mode="nearest")


class Dropout(nn.Identity):
    """[dropout]: the identity at inference (darknet applies it only while training)."""

    kind = "dropout"


class Yolo(nn.Module):
    """[yolo]: decodes the previous conv's output to ``[N, A·H·W, 5 + nc]`` in input pixels, as darknet's
    ``forward_yolo_layer`` + ``get_yolo_box`` do (s = scale_x_y, stride = input size / grid size per axis):

    * new_coords=0: cx = (sigmoid(tx)·s − (s−1)/2 + grid_x)·stride, w = exp(tw)·anchor_w; objectness and
      classes sigmoid;
    * new_coords=1 (scaled-YOLOv4): no activation here (the conv before is ``logistic``): cx = (tx·s − (s−1)/2
      + grid_x)·stride, w = (2·tw)²·anchor_w; objectness and classes as they come.
    """

    kind = "yolo"

    def __init__(self, anchors: Sequence[Tuple[float, float]], classes: int, scale_x_y: float, new_coords: bool):
        super().__init__()
        self.na, self.nc, self.no = len(anchors), classes, classes + 5
        self.scale_x_y, self.new_coords = float(scale_x_y), bool(new_coords)
        self.anchors = tuple((float(w), float(h)) for w, h in anchors)  # pixels
        self.register_buffer("anchor_wh", torch.tensor(self.anchors, dtype=torch.float32).reshape(1, -1, 1, 1, 2),
                             persistent=False)

    def forward(self, x: torch.Tensor, image_hw: Tuple[int, int]) -> torch.Tensor:
        ny, nx = int(x.shape[2]), int(x.shape[3])  # fixed by the input size; the batch stays symbolic
        x = x.reshape(-1, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)  # n, anchor, row, column, value
        y = x if self.new_coords else x.sigmoid()
        yv, xv = torch.meshgrid(torch.arange(ny, device=x.device), torch.arange(nx, device=x.device), indexing="ij")
        grid = torch.stack((xv, yv), 2).reshape(1, 1, ny, nx, 2).to(x.dtype)
        stride = torch.tensor([image_hw[1] / nx, image_hw[0] / ny], dtype=x.dtype, device=x.device)
        s = self.scale_x_y
        xy = (y[..., 0:2] * s - 0.5 * (s - 1.0) + grid) * stride
        if self.new_coords:
            wh = y[..., 2:4] * y[..., 2:4] * 4.0 * self.anchor_wh
        else:
            wh = torch.exp(x[..., 2:4]) * self.anchor_wh
        return torch.cat((xy, wh, y[..., 4:]), -1).reshape(-1, self.na * ny * nx, self.no)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class DarknetModel(nn.Module):
    """The network of a darknet cfg; ``forward(images FP32 [N, C, H, W], RGB 0..1) -> [N, K, 5 + nc]``.

    ``layers[i]`` is cfg layer ``i`` (section ``i + 1``), so darknet's layer indices hold everywhere (state-dict
    keys ``layers.<i>.conv.weight``, ``layers.<i>.bn.running_var``…). ``height``/``width`` replace the
    ``[net]`` size (a cfg trained at 608 runs at 320 too); shapes are checked at that size.

    Attributes after building: ``height``, ``width``, ``channels``, ``num_classes``, and per ``[yolo]`` level
    in output (ascending stride) order: ``yolo_indices``, ``strides`` (input pixels per cell, (y, x)),
    ``anchors`` (pixel (w, h) pairs flattened), ``scale_x_y``, ``new_coords``.
    """

    def __init__(self, sections: Union[str, Sequence[Mapping]], height: Optional[int] = None,
                 width: Optional[int] = None, name: str = "darknet"):
        super().__init__()
        if isinstance(sections, str):
            sections = parse_cfg(sections)
        if not sections:
            raise DarknetError("cfg holds no [section]")
        self.name = name
        net = sections[0]
        if net.get("type") not in ("net", "network"):
            raise DarknetError(f"the first section must be [net], got {_where(net)}")
        opts = _Options(net, _where(net))
        self.channels = opts.integer("channels", 3)
        self.height = int(height) if height is not None else opts.integer("height", 0)
        self.width = int(width) if width is not None else opts.integer("width", 0)
        if self.height <= 0 or self.width <= 0 or self.channels <= 0:
            raise DarknetError(f"{_where(net)}: width, height and channels must be positive "
                               f"(got {self.width}x{self.height}x{self.channels})")
        # the one other [net] option inference needs: how darknet fits an image to the network (letter_box=1: keep
        # the aspect ratio, fill with 0.5; otherwise stretch); every other (batch, learning rate, augmentation…) is
        # about training
        self.letter_box = opts.integer("letter_box", 0) == 1

        layers: List[nn.Module] = []
        shapes: List[Tuple[int, int, int]] = []  # (channels, height, width) of each layer's output
        yolo: List[int] = []
        for i, section in enumerate(sections[1:]):
            where = _where(section, i)
            prev = shapes[-1] if shapes else (self.channels, self.height, self.width)
            layer, shape = _build_layer(section, i, where, prev, shapes, layers)
            layer.index = i
            layers.append(layer)
            shapes.append(shape)
            if isinstance(layer, Yolo):
                yolo.append(i)
        if not yolo:
            raise DarknetError("cfg has no [yolo] layer: nothing to output")
        self.layers = nn.ModuleList(layers)
        self.shapes = shapes
        self.save = sorted({j for m in layers for j in getattr(m, "sources", ())})

        classes = {layers[j].nc for j in yolo}
        if len(classes) != 1:
            raise DarknetError(f"[yolo] layers disagree on classes: {sorted(classes)}")
        self.num_classes = classes.pop()
        # Output order: ascending stride (yolov4-tiny lists stride 32 first); ties keep the cfg order.
        level_strides = {j: (self.height / shapes[j][1], self.width / shapes[j][2]) for j in yolo}
        self.yolo_indices = tuple(sorted(yolo, key=lambda j: (level_strides[j][1], level_strides[j][0], j)))
        self.strides = tuple(level_strides[j] for j in self.yolo_indices)
        self.anchors = tuple(tuple(v for wh in layers[j].anchors for v in wh) for j in self.yolo_indices)
        self.scale_x_y = tuple(layers[j].scale_x_y for j in self.yolo_indices)
        self.new_coords = tuple(layers[j].new_coords for j in self.yolo_indices)
        self.cfg_source = "cfg"  # set by from_spec: the built-in cfg's name or the user's file
        self.cfg_sha256 = ""

    @property
    def num_candidates(self) -> int:
        return sum(self.layers[j].na * self.shapes[j][1] * self.shapes[j][2] for j in self.yolo_indices)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_hw = (int(images.shape[2]), int(images.shape[3]))
        x = images
        saved: Dict[int, torch.Tensor] = {}
        levels: Dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Route):
                x = layer([saved[j] for j in layer.sources])
            elif isinstance(layer, Shortcut):
                x = layer(x, [saved[j] for j in layer.sources])
            elif isinstance(layer, Yolo):
                levels[i] = layer(x, image_hw)
            else:
                x = layer(x)
            if i in self.save:
                saved[i] = x
        return torch.cat([levels[j] for j in self.yolo_indices], 1)

    @torch.no_grad()
    def fuse(self) -> "DarknetModel":
        """Fold every BatchNorm into its conv (inference only; darknet weights cannot be saved afterwards)."""
        for layer in self.layers:
            if isinstance(layer, Convolutional):
                layer.fuse()
        return self

    @property
    def is_fused(self) -> bool:
        return any(layer.fused for layer in self.convolutions)

    @property
    def convolutions(self) -> List[Convolutional]:
        """The [convolutional] layers in cfg order: the order of their values in a .weights file."""
        return [layer for layer in self.layers if isinstance(layer, Convolutional)]


def _sources(opts: _Options, key: str, i: int, where: str, layers: List[nn.Module]) -> List[int]:
    """Darknet layer references (negative: relative to layer i) → absolute indices of earlier layers."""
    refs = opts.values(key)
    if not refs:
        raise DarknetError(f"{where}: option {key!r} lists no layer")
    out = []
    for ref in refs:
        j = i + ref if ref < 0 else ref
        if not 0 <= j < i:
            raise DarknetError(f"{where}: {key}={opts.section[key]} refers to layer {j}, not an earlier layer")
        if isinstance(layers[j], Yolo):
            raise DarknetError(f"{where}: reading the output of [yolo] layer {j} is not supported")
        out.append(j)
    return out


def _build_layer(section: Mapping, i: int, where: str, prev: Tuple[int, int, int],
                 shapes: List[Tuple[int, int, int]], layers: List[nn.Module]):
    """One cfg section → (module, output shape (c, h, w)), with darknet's defaults and shape arithmetic."""
    kind = section.get("type")
    opts = _Options(section, where)
    opts.ignore(_TRAINING_OPTIONS)
    c, h, w = prev
    if layers and isinstance(layers[-1], Yolo) and kind != "route":
        raise DarknetError(f"{where}: reads the output of [yolo] layer {i - 1}, which is not supported "
                           "(only a [route] may follow a [yolo] layer)")

    if kind in ("convolutional", "conv"):
        filters = opts.integer("filters", 1)
        size = opts.integer("size", 1)
        stride = opts.integer("stride", 1)
        opts.require("stride_x", (stride,))
        opts.require("stride_y", (stride,))
        pad = opts.integer("pad", 0)
        padding = size // 2 if pad else opts.integer("padding", 0)
        if pad:
            opts.ignore(("padding",))
        groups = opts.integer("groups", 1)
        batch_normalize = bool(opts.integer("batch_normalize", 0))
        activation = opts.text("activation", "logistic")  # darknet's default
        if activation not in ACTIVATIONS:
            raise DarknetError(f"{where}: activation={activation} is not supported "
                               f"(supported: {', '.join(ACTIVATIONS)})")
        opts.require("dilation", 1)
        for key in ("antialiasing", "binary", "xnor", "bin_output", "sway", "rotate", "stretch", "stretch_sway",
                    "deform", "flipped", "dot", "coordconv", "assisted_excitation", "dontload", "dontloadscales"):
            opts.require(key, 0)
        opts.ignore(("cbn", "grad_centr", "reverse", "angle"))  # training-time only
        if filters <= 0 or size <= 0 or stride <= 0 or groups <= 0 or padding < 0:
            raise DarknetError(f"{where}: filters, size, stride and groups must be positive, padding >= 0")
        if c % groups or filters % groups:
            raise DarknetError(f"{where}: groups={groups} does not divide {c} input channels and {filters} filters")
        out_h, out_w = (h + 2 * padding - size) // stride + 1, (w + 2 * padding - size) // stride + 1
        if out_h <= 0 or out_w <= 0:
            raise DarknetError(f"{where}: a {size}x{size} kernel does not fit the {h}x{w} input")
        opts.finish()
        return Convolutional(c, filters, size, stride, padding, groups, batch_normalize, activation), \
            (filters, out_h, out_w)

    if kind == "route":
        sources = _sources(opts, "layers", i, where, layers)
        groups = opts.integer("groups", 1)
        group_id = opts.integer("group_id", 0)
        if groups <= 0 or not 0 <= group_id < groups:
            raise DarknetError(f"{where}: needs groups >= 1 and 0 <= group_id < groups "
                               f"(got groups={groups}, group_id={group_id})")
        in_shapes = [shapes[j] for j in sources]
        if len({s[1:] for s in in_shapes}) != 1:
            raise DarknetError(f"{where}: layers {sources} have different sizes "
                               f"{[f'{s[1]}x{s[2]}' for s in in_shapes]}")
        if any(s[0] % groups for s in in_shapes):
            raise DarknetError(f"{where}: groups={groups} does not divide the channels {[s[0] for s in in_shapes]}")
        opts.finish()
        return Route(sources, groups, group_id), (sum(s[0] // groups for s in in_shapes),) + in_shapes[0][1:]

    if kind == "shortcut":
        sources = _sources(opts, "from", i, where, layers)
        activation = opts.text("activation", "linear")
        if activation != "linear":
            raise DarknetError(f"{where}: activation={activation} is not supported (only linear)")
        opts.require("weights_type", "none", kind=str)
        opts.require("weights_normalization", "none", kind=str)
        for j in sources:
            if shapes[j] != prev:
                raise DarknetError(f"{where}: from layer {j} has shape {shapes[j]}, the previous layer {prev}; "
                                   "only equal shapes are supported")
        opts.finish()
        return Shortcut(sources), prev

    if kind in ("maxpool", "max"):
        stride = opts.integer("stride", 1)
        size = opts.integer("size", stride)
        padding = opts.integer("padding", size - 1)
        opts.require("stride_x", (stride,))
        opts.require("stride_y", (stride,))
        for key in ("maxpool_depth", "antialiasing"):
            opts.require(key, 0)
        opts.ignore(("out_channels",))  # only read with maxpool_depth
        if size <= 0 or stride <= 0 or padding < 0:
            raise DarknetError(f"{where}: size and stride must be positive, padding >= 0")
        layer = MaxPool(size, stride, padding)
        out_h, out_w = layer.output_size(h), layer.output_size(w)
        if out_h <= 0 or out_w <= 0 or padding // 2 >= size:
            raise DarknetError(f"{where}: size {size}, stride {stride}, padding {padding} do not fit a {h}x{w} input")
        opts.finish()
        return layer, (c, out_h, out_w)

    if kind == "upsample":
        stride = opts.integer("stride", 2)
        if stride <= 0:
            raise DarknetError(f"{where}: stride={stride} is not supported (darknet downsamples with a negative "
                               "stride; only positive strides are implemented)")
        opts.require("scale", 1.0, kind=float)
        opts.finish()
        return Upsample(stride), (c, h * stride, w * stride)

    if kind == "dropout":
        opts.ignore(("probability", "dropblock", "dropblock_size_abs", "dropblock_size_rel"))
        opts.finish()
        return Dropout(), prev

    if kind == "yolo":
        classes = opts.integer("classes", 20)
        total = opts.integer("num", 1)
        anchors = opts.values("anchors", float)
        mask = opts.values("mask", int, required=False)
        if mask is None:
            mask = list(range(total))
        if len(anchors) != 2 * total:
            raise DarknetError(f"{where}: num={total} needs {2 * total} anchor values, got {len(anchors)}")
        if not mask or any(not 0 <= m < total for m in mask):
            raise DarknetError(f"{where}: mask {mask} must index the num={total} anchors")
        scale_x_y = opts.number("scale_x_y", 1.0)
        new_coords = opts.integer("new_coords", 0)
        if new_coords not in (0, 1):
            raise DarknetError(f"{where}: new_coords={new_coords} is not supported (0 or 1)")
        opts.ignore(_YOLO_TRAINING_OPTIONS)
        unknown = [key for key in section if key not in opts.used]
        if unknown:  # darknet itself only warns about unused options; none of these would change the decode
            LOGGER.debug("%s: ignoring option(s) %s", where, ", ".join(unknown))
        expected = len(mask) * (classes + 5)
        if c != expected:
            raise DarknetError(f"{where}: the previous layer has {c} channels; {len(mask)} anchors x "
                               f"({classes} classes + 5) need {expected}")
        return Yolo([(anchors[2 * m], anchors[2 * m + 1]) for m in mask], classes, scale_x_y, new_coords), prev

    raise DarknetError(f"{where}: unsupported layer type [{kind}] (supported: net, convolutional, route, "
                       "shortcut, maxpool, upsample, yolo, dropout)")


# ----------------------------------------------------------------------------------------------------------------
# From a spec
# ----------------------------------------------------------------------------------------------------------------


def from_spec(spec: ModelSpec, cfg_path: Optional[PathLike] = None) -> DarknetModel:
    """The model of a yolov4-family spec: from ``cfg_path`` if given, else from ``builtin_cfg(spec.architecture)``.

    The spec's input size replaces the cfg's width/height (so a 608 cfg can be built at 320). The cfg's [yolo]
    levels must agree with the spec: strides, anchors (per level, in stride order), scale_x_y, classes;
    otherwise :class:`DarknetError` lists every difference. Parameters are left at PyTorch's defaults.
    """
    spec.validate()
    if spec.family != "yolov4":
        raise DarknetError(f"{spec.name}: family {spec.family!r} is not built from a darknet cfg (needs 'yolov4')")
    if spec.width_multiple != 1.0 or spec.depth_multiple != 1.0:
        raise DarknetError(f"{spec.name}: width/depth multiples do not apply to darknet cfgs (got "
                           f"{spec.width_multiple}, {spec.depth_multiple}); edit the cfg instead")
    height, width = spec.input_size
    if cfg_path is None:
        if not spec.architecture:
            raise DarknetError(f"{spec.name}: the spec names no built-in darknet cfg; give a cfg file")
        text = builtin_cfg(spec.architecture, classes=spec.num_classes, width=width, height=height)
        source = f"builtin:{spec.architecture}"
    else:
        path = Path(cfg_path)
        if not path.is_file():
            raise FileNotFoundError(f"darknet cfg file not found: {path}")
        text = path.read_text(encoding="utf-8", errors="replace")
        source = path.name
    try:
        model = DarknetModel(parse_cfg(text), height=height, width=width, name=spec.name)
    except DarknetError as exc:
        raise DarknetError(f"{source}: {exc}") from None
    check_spec(model, spec, source)
    model.cfg_source = source
    model.cfg_text = text  # kept: a torch artifact (yolo_triton.models.torch_artifact) rebuilds from it
    model.cfg_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return model


def check_spec(model: DarknetModel, spec: ModelSpec, source: str = "cfg") -> None:
    """Raise :class:`DarknetError` unless the model's [yolo] levels and input fit ``spec``."""
    problems = []
    if model.channels != 3:
        problems.append(f"channels {model.channels}, the pipeline feeds 3 (RGB)")
    strides = tuple(sy if sy == sx else (sy, sx) for sy, sx in model.strides)
    if strides != tuple(float(s) for s in spec.strides):
        problems.append(f"[yolo] strides {[_num(s) for s in strides]} at input {spec.input_size}, "
                        f"spec {list(spec.strides)}")
    if len(model.anchors) == len(spec.anchors):
        for k, (got, want) in enumerate(zip(model.anchors, spec.anchors)):
            if tuple(map(float, got)) != tuple(map(float, want)):
                problems.append(f"level {k} ([yolo] layer {model.yolo_indices[k]}) anchors {[_num(v) for v in got]}, "
                                f"spec {list(want)}")
    else:
        problems.append(f"{len(model.anchors)} [yolo] levels, spec {len(spec.anchors)}")
    want_scales = tuple(spec.scale_x_y) or (1.0,) * len(spec.strides)
    if tuple(model.scale_x_y) != tuple(map(float, want_scales)):
        problems.append(f"scale_x_y {list(model.scale_x_y)}, spec {list(want_scales)}")
    if model.num_classes != spec.num_classes:
        problems.append(f"classes {model.num_classes}, spec {spec.num_classes} labels")
    if problems:
        raise DarknetError(f"{source} does not match spec {spec.name}: " + "; ".join(problems))


def _num(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


# ----------------------------------------------------------------------------------------------------------------
# Darknet .weights
# ----------------------------------------------------------------------------------------------------------------


def _conv_arrays(layer: Convolutional) -> List[torch.Tensor]:
    """A conv's tensors in .weights order: BN beta, gamma, mean, var (or the conv bias), then the kernel."""
    if layer.batch_normalize:
        bn = layer.bn
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, layer.conv.weight]
    return [layer.conv.bias, layer.conv.weight]


def darknet_weight_count(model: DarknetModel) -> int:
    """How many float32 values a .weights file of this cfg holds after its header (refuses a fused model)."""
    if model.is_fused:
        raise DarknetError("darknet weights need an unfused model (fuse() folded the BatchNorm values away)")
    return sum(t.numel() for layer in model.convolutions for t in _conv_arrays(layer))


def _header_size(major: int, minor: int) -> int:
    # darknet parser.c load_weights: ``seen`` is a size_t from version 0.2 on, an int before; majors/minors
    # above 1000 mark a transposed (old) file, read with the int.
    return 12 + (8 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 4)


def load_darknet_weights(model: DarknetModel, path: PathLike) -> DarknetModel:
    """Read a darknet .weights file into ``model`` (unfused). The file must hold exactly the cfg's values:
    a short file or trailing bytes raise :class:`DarknetError` with the expected and actual float counts.
    The header is kept as ``model.darknet_header`` = (major, minor, revision, seen)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"darknet weights file not found: {path}")
    expected = darknet_weight_count(model)
    data = Path(path).read_bytes()
    if len(data) < 12:
        raise DarknetError(f"{path}: {len(data)} bytes is too short for a darknet weights header")
    major, minor, revision = struct.unpack("<3i", data[:12])
    header = _header_size(major, minor)
    payload = len(data) - header
    if payload < 0 or payload % 4:
        raise DarknetError(f"{path}: {max(payload, 0)} bytes after the {header}-byte header (version "
                           f"{major}.{minor}.{revision}) is not a whole number of float32 values; expected "
                           f"{expected} floats ({4 * expected} bytes)")
    actual = payload // 4
    if actual != expected:
        what = "too short" if actual < expected else f"{actual - expected} trailing floats"
        raise DarknetError(f"{path}: holds {actual} floats after the header, the cfg ({model.name}, "
                           f"{len(model.convolutions)} conv layers) needs {expected}: {what}; wrong cfg or "
                           "truncated file?")
    values = np.frombuffer(data, dtype="<f4", offset=header)
    offset = 0
    with torch.no_grad():
        for layer in model.convolutions:
            for tensor in _conv_arrays(layer):
                n = tensor.numel()
                tensor.copy_(torch.from_numpy(values[offset:offset + n].copy()).reshape(tensor.shape))
                offset += n
    seen = struct.unpack("<q" if header == 20 else "<i", data[12:header])[0]
    model.darknet_header = (major, minor, revision, seen)
    return model


def save_darknet_weights(model: DarknetModel, path: PathLike, seen: int = 0) -> None:
    """Write ``model`` (unfused) as a darknet .weights file: header 0.2.5 + int64 ``seen``, then per conv in
    cfg order BN beta, gamma, mean, var (or the bias), then the kernel, float32 little endian."""
    darknet_weight_count(model)  # refuses a fused model
    with open(os.fspath(path), "wb") as f:
        f.write(struct.pack("<3iq", *WEIGHTS_VERSION, int(seen)))
        for layer in model.convolutions:
            for tensor in _conv_arrays(layer):
                f.write(tensor.detach().cpu().contiguous().numpy().astype("<f4").tobytes())


# ----------------------------------------------------------------------------------------------------------------
# Random weights
# ----------------------------------------------------------------------------------------------------------------

# Random head logits (see init_random_weights): their std per output channel, the most standard deviations a
# calibration value may lie from the mean, and the std of the w/h logits of new_coords=0 levels.
HEAD_STD = 1.6
HEAD_MAX_SIGMAS = 3.5
WH_LOGIT_STD = 0.5  # new_coords=0 levels: exp(tw) stays within anchor · e^(±1) for ~95% of the boxes


@torch.no_grad()
def init_random_weights(model: DarknetModel, seed: int, head_std: float = HEAD_STD) -> DarknetModel:
    """Seeded, deterministic random weights that keep activations in a sane range; logs a loud warning.

    As :func:`yolo_triton.models.yolov7.init_random_weights` (generator draws in module order; the same
    calibration of the BatchNorm statistics on seeded noise images, which leaves every pre-activation at an
    RMS of ~8, where Mish and leaky act like ReLU and He init keeps the scale over 100+ layers):

    * convs: He ``N(0, 2 / fan_in)``, biases ``N(0, 0.05)``; BN gamma ``U(0.7, 1.3)``, beta ``N(0, 0.1)``;
    * the biased convs feeding a [yolo] layer are set in the same calibration pass (:func:`_standardise_head`):
      first the image-border signature is projected out of their kernels (zero padding meets positive-mean
      activations, so border cells carry an image-independent offset: measured 3-5 logits of objectness above
      the interior on yolov4, which put every detection on the image's edge), then each output channel is
      standardised to mean 0 and std ``head_std`` on the calibration images (the w/h logits of a
      ``new_coords=0`` level to ``WH_LOGIT_STD``: darknet's ``exp(tw)`` is unbounded), plus YOLOv7's prior
      biases (objectness ``log(8 / (640 / s)²)``, classes ``log(0.6 / (nc - 0.99))``).

    With the default ``head_std``, seeds 0-2 were measured to give 0 to 69 detections (conf 0.25, after NMS)
    on the five scikit-image photos, for yolov4 at 320 and 608 and yolov4-tiny at 416.
    """
    if model.is_fused:
        raise DarknetError("init_random_weights needs an unfused model (BatchNorm statistics are calibrated)")
    gen = torch.Generator().manual_seed(int(seed))
    for module in model.modules():
        init_conv_or_bn(module, gen)
    handles = []
    for j in model.yolo_indices:
        head = model.layers[j - 1]
        if isinstance(head, Convolutional) and head.conv.bias is not None:
            hook = functools.partial(_standardise_head, yolo=model.layers[j], head_std=head_std,
                                     stride=model.height / model.shapes[j][1])
            handles.append(head.conv.register_forward_hook(hook))
    try:
        _calibrate_batchnorm(model, gen)  # one eval pass: BN statistics, then the heads (forward order)
    finally:
        for handle in handles:
            handle.remove()
    LOGGER.warning("%s (model %s, seed %d): do not serve these results as detections",
                   RANDOM_WEIGHTS_WARNING, model.name, int(seed))
    return model


def _standardise_head(conv: nn.Conv2d, inputs, output: torch.Tensor, yolo: Yolo, head_std: float,
                      stride: float) -> torch.Tensor:
    """Forward hook on a head conv during calibration: logits ~ prior + N(0, std²) per output channel, with
    no image-border signature (see :func:`init_random_weights`)."""
    x = inputs[0]
    strips = (x[:, :, :, 0], x[:, :, :, 1], x[:, :, :, -2], x[:, :, :, -1],
              x[:, :, 0, :], x[:, :, 1, :], x[:, :, -2, :], x[:, :, -1, :])
    if conv.groups == 1 and min(x.shape[2:]) > 4 and x.shape[1] >= 4 * len(strips):
        interior = x[:, :, 2:-2, 2:-2].mean(dim=(0, 2, 3))
        directions = torch.stack([strip.mean(dim=(0, 2)) - interior for strip in strips], 1)  # C x 8
        q, _ = torch.linalg.qr(directions)
        weight = conv.weight.permute(0, 2, 3, 1)  # O, kh, kw, C: project each tap along C
        conv.weight.copy_((weight - (weight @ q) @ q.T).permute(0, 3, 1, 2))
        output = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    mean = output.mean(dim=(0, 2, 3))
    deviation = output - mean.reshape(1, -1, 1, 1)
    # the std, or the largest deviation / HEAD_MAX_SIGMAS if larger: rare outliers stay within a Gaussian's range
    spread = deviation.abs().amax(dim=(0, 2, 3)) / HEAD_MAX_SIGMAS
    std = torch.maximum(output.std(dim=(0, 2, 3)), spread).clamp_min(1e-6)
    target = torch.full((yolo.na, yolo.no), head_std)
    prior = torch.zeros(yolo.na, yolo.no)
    if not yolo.new_coords:
        target[:, 2:4] = WH_LOGIT_STD
    prior[:, 4] = math.log(8 / (640 / stride) ** 2)
    prior[:, 5:] = math.log(0.6 / max(yolo.nc - 0.99, 0.01))
    scale = target.reshape(-1) / std
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias.copy_((conv.bias - mean) * scale + prior.reshape(-1))
    return deviation * scale.reshape(1, -1, 1, 1) + prior.reshape(1, -1, 1, 1)
