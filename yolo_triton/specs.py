"""Model specs: the one place that says what a detector family looks like.

Every other file derives from a ``ModelSpec``: the PyTorch architecture and its ONNX export, the Triton
``config.pbtxt`` files, the Python models inside the server, the clients, the benches and the tests.
Nobody retypes an input size, an anchor or a tensor name.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

from .coco import COCO80_NAMES

# Output layouts a postprocess understands (see ``yolo_triton.postprocess``).
LAYOUT_RAW_GRID = "raw_grid"  # [N, K, 5 + nc]: cx, cy, w, h (input pixels), objectness, class scores; sigmoid done

# Tensor names on the wire, shared by the ensemble, its steps, clients and tests.
ENSEMBLE_INPUT = "IMAGE"  # BYTES [1]: one encoded image (JPEG, PNG, BMP, WebP) per batch element
ENSEMBLE_OUTPUTS = ("num_detections", "boxes", "scores", "classes", "class_names")
DETECTOR_INPUT = "images"  # FP32 [3, H, W], RGB, 0..1, letterboxed
DETECTOR_OUTPUT = "output"  # FP32 [K, 5 + nc] for LAYOUT_RAW_GRID
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


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What one detector is: architecture, input, output layout and serving defaults."""

    name: str  # model name in the repository; the ensemble is f"{name}_e2e"
    family: str  # "yolov7" (issue B adds "yolov4")
    input_size: Tuple[int, int]  # (height, width) the detector takes
    strides: Tuple[int, ...]
    anchors: Tuple[Tuple[int, ...], ...]  # per level, pixel (w, h) pairs flattened, as in the official yaml
    labels: Tuple[str, ...] = COCO80_NAMES
    layout: str = LAYOUT_RAW_GRID
    layers: Tuple[tuple, ...] = YOLOV7_LAYERS
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
        if not 0.0 <= self.conf_threshold <= 1.0 or not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"{self.name}: thresholds must lie in [0, 1]")


YOLOV7 = ModelSpec(
    name="yolov7",
    family="yolov7",
    input_size=(640, 640),
    strides=(8, 16, 32),
    anchors=((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401)),
)

SPECS = {spec.name: spec for spec in (YOLOV7,)}


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(SPECS))}") from None
