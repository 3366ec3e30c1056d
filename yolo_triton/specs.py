"""Model specs: the one place that says what a detector family looks like.

Every other file derives from a ``ModelSpec``: the PyTorch architecture and its ONNX export, the Triton
``config.pbtxt`` files, the Python models inside the server, the clients, the benches and the tests.
Nobody retypes an input size, an anchor or a tensor name.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

from .coco import COCO80_NAMES

# Output layouts a postprocess understands (see ``yolo_triton.postprocess``); the detector's outputs per layout
# are ``ModelSpec.detector_outputs``.
LAYOUT_RAW_GRID = "raw_grid"  # [N, K, 5 + nc]: cx, cy, w, h (input pixels), objectness, class scores; sigmoid done
LAYOUT_EFFICIENT_NMS = "efficient_nms"  # official export.py --end2end (TensorRT EfficientNMS_TRT): NMS done in the engine
LAYOUT_TENSORRTX_PROB = "tensorrtx_prob"  # tensorrtx / isarsoft <= v1.3 yolov4 "prob": count + 1000 x 7, NMS still needed
LAYOUT_ISARSOFT_DETECTIONS = "isarsoft_detections"  # isarsoft master yolov4 "detections": K x 7, normalised, no NMS
LAYOUTS = (LAYOUT_RAW_GRID, LAYOUT_EFFICIENT_NMS, LAYOUT_TENSORRTX_PROB, LAYOUT_ISARSOFT_DETECTIONS)
TENSORRTX_MAX_BOXES = 1000  # tensorrtx yololayer.h MAX_OUTPUT_BBOX_COUNT

# Tensor names on the wire, shared by the ensemble, its steps, clients and tests.
ENSEMBLE_INPUT = "IMAGE"  # BYTES [1]: one encoded image (JPEG, PNG, BMP, WebP) per batch element
ENSEMBLE_OUTPUTS = ("num_detections", "boxes", "scores", "classes", "class_names")
DETECTOR_INPUT = "images"  # FP32 [3, H, W], RGB, 0..1, letterboxed
DETECTOR_OUTPUT = "output"  # FP32 [K, 5 + nc] for LAYOUT_RAW_GRID (other layouts: ModelSpec.detector_outputs)
LETTERBOX_META = "letterbox"  # FP32 [5]: original height, original width, gain, pad x, pad y

# YOLOv7 layer table, in the order and with the "from" indices of the official cfg/deploy/yolov7.yaml, so that
# module indices (and so state-dict keys ``model.<i>.…``) line up with official checkpoints.
# Each row: (from, module, args); channel args are before the width multiple is applied.
YOLOV7_LAYERS: Tuple[tuple, ...] = (
    # backbone
    (-1, "Conv", (32, 3, 1)),  # 0
    (-1, "Conv", (64, 3, 2)),  # 1-P1/2
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (128, 3, 2)),  # 3-P2/4
    (-1, "Conv", (64, 1, 1)),
    (-2, "Conv", (64, 1, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    ((-1, -3, -5, -6), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1)),  # 11
    (-1, "MP", ()),
    (-1, "Conv", (128, 1, 1)),
    (-3, "Conv", (128, 1, 1)),
    (-1, "Conv", (128, 3, 2)),
    ((-1, -3), "Concat", (1,)),  # 16-P3/8
    (-1, "Conv", (128, 1, 1)),
    (-2, "Conv", (128, 1, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    ((-1, -3, -5, -6), "Concat", (1,)),
    (-1, "Conv", (512, 1, 1)),  # 24
    (-1, "MP", ()),
    (-1, "Conv", (256, 1, 1)),
    (-3, "Conv", (256, 1, 1)),
    (-1, "Conv", (256, 3, 2)),
    ((-1, -3), "Concat", (1,)),  # 29-P4/16
    (-1, "Conv", (256, 1, 1)),
    (-2, "Conv", (256, 1, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    ((-1, -3, -5, -6), "Concat", (1,)),
    (-1, "Conv", (1024, 1, 1)),  # 37
    (-1, "MP", ()),
    (-1, "Conv", (512, 1, 1)),
    (-3, "Conv", (512, 1, 1)),
    (-1, "Conv", (512, 3, 2)),
    ((-1, -3), "Concat", (1,)),  # 42-P5/32
    (-1, "Conv", (256, 1, 1)),
    (-2, "Conv", (256, 1, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    ((-1, -3, -5, -6), "Concat", (1,)),
    (-1, "Conv", (1024, 1, 1)),  # 50
    # head
    (-1, "SPPCSPC", (512,)),  # 51
    (-1, "Conv", (256, 1, 1)),
    (-1, "Upsample", (2,)),
    (37, "Conv", (256, 1, 1)),  # route backbone P4
    ((-1, -2), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1)),
    (-2, "Conv", (256, 1, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    ((-1, -2, -3, -4, -5, -6), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1)),  # 63
    (-1, "Conv", (128, 1, 1)),
    (-1, "Upsample", (2,)),
    (24, "Conv", (128, 1, 1)),  # route backbone P3
    ((-1, -2), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1)),
    (-2, "Conv", (128, 1, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    ((-1, -2, -3, -4, -5, -6), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1)),  # 75
    (-1, "MP", ()),
    (-1, "Conv", (128, 1, 1)),
    (-3, "Conv", (128, 1, 1)),
    (-1, "Conv", (128, 3, 2)),
    ((-1, -3, 63), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1)),
    (-2, "Conv", (256, 1, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    ((-1, -2, -3, -4, -5, -6), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1)),  # 88
    (-1, "MP", ()),
    (-1, "Conv", (256, 1, 1)),
    (-3, "Conv", (256, 1, 1)),
    (-1, "Conv", (256, 3, 2)),
    ((-1, -3, 51), "Concat", (1,)),
    (-1, "Conv", (512, 1, 1)),
    (-2, "Conv", (512, 1, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    ((-1, -2, -3, -4, -5, -6), "Concat", (1,)),
    (-1, "Conv", (512, 1, 1)),  # 101
    (75, "RepConv", (256, 3, 1)),
    (88, "RepConv", (512, 3, 1)),
    (101, "RepConv", (1024, 3, 1)),
    ((102, 103, 104), "IDetect", ()),  # Detect(P3, P4, P5)
)

# yolov7-tiny layer table, row for row the official cfg/training/yolov7-tiny.yaml (the released yolov7-tiny.pt has
# this IDetect head): Conv args are the yaml's (c2, k, s, p, g, act), every Conv with its own LeakyReLU(0.1); the SPP
# block is spelled out as plain layers (two 1×1 Convs, SP max-pools 5/9/13, Concat); nn.Upsample args as the yaml's.
_LEAKY = "nn.LeakyReLU(0.1)"
YOLOV7_TINY_LAYERS: Tuple[tuple, ...] = (
    # backbone
    (-1, "Conv", (32, 3, 2, None, 1, _LEAKY)),  # 0-P1/2
    (-1, "Conv", (64, 3, 2, None, 1, _LEAKY)),  # 1-P2/4
    (-1, "Conv", (32, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (32, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (32, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (32, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),  # 7
    (-1, "MP", ()),  # 8-P3/8
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),  # 14
    (-1, "MP", ()),  # 15-P4/16
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (128, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (128, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (128, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),  # 21
    (-1, "MP", ()),  # 22-P5/32
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (256, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (256, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (256, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (512, 1, 1, None, 1, _LEAKY)),  # 28
    # head
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (256, 1, 1, None, 1, _LEAKY)),
    (-1, "SP", (5,)),
    (-2, "SP", (9,)),
    (-3, "SP", (13,)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),
    ((-1, -7), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),  # 37
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),
    (-1, "Upsample", (None, 2, "nearest")),
    (21, "Conv", (128, 1, 1, None, 1, _LEAKY)),  # route backbone P4
    ((-1, -2), "Concat", (1,)),
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),  # 47
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-1, "Upsample", (None, 2, "nearest")),
    (14, "Conv", (64, 1, 1, None, 1, _LEAKY)),  # route backbone P3
    ((-1, -2), "Concat", (1,)),
    (-1, "Conv", (32, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (32, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (32, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (32, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),  # 57
    (-1, "Conv", (128, 3, 2, None, 1, _LEAKY)),
    ((-1, 47), "Concat", (1,)),
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),  # 65
    (-1, "Conv", (256, 3, 2, None, 1, _LEAKY)),
    ((-1, 37), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (128, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (128, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (128, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),  # 73
    (57, "Conv", (128, 3, 1, None, 1, _LEAKY)),
    (65, "Conv", (256, 3, 1, None, 1, _LEAKY)),
    (73, "Conv", (512, 3, 1, None, 1, _LEAKY)),
    ((74, 75, 76), "IDetect", ()),  # Detect(P3, P4, P5)
)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor of a Triton config: name, Triton data type, per-item dims (batch dim not included)."""

    name: str
    data_type: str
    dims: Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What one detector is: architecture, input, output layout and serving defaults."""

    name: str  # model name in the repository; the ensemble is f"{name}_e2e"
    family: str  # "yolov7" (our PyTorch layer table) or "yolov4" (built from a darknet cfg)
    input_size: Tuple[int, int]  # (height, width) the detector takes
    strides: Tuple[int, ...]
    anchors: Tuple[Tuple[int, ...], ...]  # per level, pixel (w, h) pairs flattened, as in the official yaml
    labels: Tuple[str, ...] = COCO80_NAMES
    layout: str = LAYOUT_RAW_GRID
    layers: Tuple[tuple, ...] = YOLOV7_LAYERS  # yolov7 family: the official yaml's layer table
    darknet_cfg: str = ""  # yolov4 family: the built-in cfg (yolo_triton.models.darknet) used when no .cfg is given
    scale_x_y: Tuple[float, ...] = ()  # darknet [yolo] scale_x_y per level (stride order); empty: 1.0 everywhere
    nms_top_k: int = 100  # LAYOUT_EFFICIENT_NMS: detections slots the engine's NMS returns (export.py --topk-all)
    plugins: Tuple[str, ...] = ()  # shared libraries the detector needs loaded into tritonserver (TensorRT plugins)
    width_multiple: float = 1.0
    depth_multiple: float = 1.0
    pad_value: int = 114  # letterbox fill, as the official detect.py
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300
    max_batch_size: int = 32
    preferred_batch_sizes: Tuple[int, ...] = (4, 8, 16)
    max_queue_delay_us: int = 2000

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """Values per candidate box in the raw grid layout: 4 box + objectness + class scores."""
        return 5 + self.num_classes

    @property
    def anchors_per_level(self) -> int:
        return len(self.anchors[0]) // 2

    @property
    def num_candidates(self) -> int:
        """K in [N, K, 5+nc]: anchors × grid cells summed over the levels."""
        h, w = self.input_size
        return sum(self.anchors_per_level * (h // s) * (w // s) for s in self.strides)

    @property
    def detector_outputs(self) -> Tuple[TensorSpec, ...]:
        """What the detector returns per image for this spec's layout: the detector's config.pbtxt outputs and the
        postprocess's inputs, checked against each other when the postprocess loads."""
        if self.layout == LAYOUT_RAW_GRID:
            return (TensorSpec(DETECTOR_OUTPUT, "TYPE_FP32", (self.num_candidates, self.num_outputs)),)
        if self.layout == LAYOUT_EFFICIENT_NMS:
            k = self.nms_top_k
            return (
                TensorSpec("num_dets", "TYPE_INT32", (1,)),
                TensorSpec("det_boxes", "TYPE_FP32", (k, 4)),
                TensorSpec("det_scores", "TYPE_FP32", (k,)),
                TensorSpec("det_classes", "TYPE_INT32", (k,)),
            )
        if self.layout == LAYOUT_TENSORRTX_PROB:
            return (TensorSpec("prob", "TYPE_FP32", (1 + 7 * TENSORRTX_MAX_BOXES, 1, 1)),)
        if self.layout == LAYOUT_ISARSOFT_DETECTIONS:
            return (TensorSpec("detections", "TYPE_FP32", (7 * self.num_candidates, 1, 1)),)
        raise ValueError(f"{self.name}: unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")

    @property
    def ensemble_name(self) -> str:
        return f"{self.name}_e2e"

    @property
    def preprocess_name(self) -> str:
        return f"{self.name}_preprocess"

    @property
    def postprocess_name(self) -> str:
        return f"{self.name}_postprocess"

    def with_overrides(self, **changes) -> "ModelSpec":
        """A variant (smaller input or width for fast tests, other thresholds); validated like the original."""
        spec = dataclasses.replace(self, **changes)
        spec.validate()
        return spec

    def validate(self) -> None:
        h, w = self.input_size
        largest = max(self.strides)
        if h % largest or w % largest:
            raise ValueError(f"{self.name}: input size {self.input_size} must be a multiple of the largest stride {largest}")
        if len(self.anchors) != len(self.strides):
            raise ValueError(f"{self.name}: {len(self.anchors)} anchor levels for {len(self.strides)} strides")
        if self.layout not in LAYOUTS:
            raise ValueError(f"{self.name}: unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        if self.scale_x_y and len(self.scale_x_y) != len(self.strides):
            raise ValueError(f"{self.name}: {len(self.scale_x_y)} scale_x_y values for {len(self.strides)} strides")
        if not 0.0 <= self.conf_threshold <= 1.0 or not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"{self.name}: thresholds must lie in [0, 1]")


YOLOV7 = ModelSpec(
    name="yolov7",
    family="yolov7",
    input_size=(640, 640),
    strides=(8, 16, 32),
    anchors=((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401)),
)

# official cfg/training/yolov7-tiny.yaml (released yolov7-tiny.pt): 640 input, LeakyReLU(0.1), IDetect at strides
# 8/16/32 with the yaml's anchors.
YOLOV7_TINY = ModelSpec(
    name="yolov7_tiny",
    family="yolov7",
    input_size=(640, 640),
    strides=(8, 16, 32),
    anchors=((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326)),
    layers=YOLOV7_TINY_LAYERS,
)

# darknet yolov4.cfg: 608 input, Mish, SPP, PAN; [yolo] layers at strides 8/16/32 with scale_x_y 1.2/1.1/1.05.
YOLOV4 = ModelSpec(
    name="yolov4",
    family="yolov4",
    input_size=(608, 608),
    strides=(8, 16, 32),
    anchors=((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401)),
    layers=(),
    darknet_cfg="yolov4",
    scale_x_y=(1.2, 1.1, 1.05),
)

# darknet yolov4-tiny.cfg: 416 input, leaky, grouped routes; two [yolo] layers (masks 1,2,3 at stride 16 and 3,4,5
# at stride 32 of anchors 10,14 23,27 37,58 81,82 135,169 344,319), scale_x_y 1.05.
YOLOV4_TINY = ModelSpec(
    name="yolov4_tiny",
    family="yolov4",
    input_size=(416, 416),
    strides=(16, 32),
    anchors=((23, 27, 37, 58, 81, 82), (81, 82, 135, 169, 344, 319)),
    layers=(),
    darknet_cfg="yolov4-tiny",
    scale_x_y=(1.05, 1.05),
)

SPECS = {spec.name: spec for spec in (YOLOV7, YOLOV7_TINY, YOLOV4, YOLOV4_TINY)}
# what `make serve` / `make build-engines` serve unless MODELS says otherwise
DEFAULT_MODELS = ("yolov7", "yolov4")


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(SPECS))}") from None
