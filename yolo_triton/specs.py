"""The serving contract: tensor names, model specs and request parameters — what every other file derives from.

A ``ModelSpec`` says what one detector family is: input size, strides and anchors, class names, output layout
(``yolo_triton.layouts``), thresholds and batching. The PyTorch networks and their ONNX export, the Triton configs,
the Python steps inside the server, the clients, the benches and the tests read it; nobody retypes an input size,
an anchor or a tensor name.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Mapping, Optional, Tuple

from .coco import COCO80_NAMES

# the fits of boxes.Letterbox (written here too: the contract imports nothing of the request path)
FITS = ("letterbox", "darknet", "stretch")

# Tensor names on the wire, shared by the ensemble, its steps, clients and tests.
ENSEMBLE_INPUT = "IMAGE"  # BYTES [1]: one encoded image (JPEG, PNG, BMP, WebP) per batch element
ENSEMBLE_OUTPUTS = ("num_detections", "boxes", "scores", "classes", "class_names")
DETECTOR_INPUT = "images"  # FP32 [3, H, W], RGB, 0..1, letterboxed
LETTERBOX_META = "letterbox"  # FP32 [5]: original height, original width, gain, pad x, pad y
# The detector's outputs, by layout (yolo_triton.layouts says their shapes and how they are read)
DETECTOR_OUTPUT = "output"  # raw grid: FP32 [K, 5 + nc]
EFFICIENT_NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")  # TensorRT EfficientNMS_TRT
TENSORRTX_OUTPUT = "prob"  # tensorrtx / isarsoft <= v1.3 yolov4
ISARSOFT_OUTPUT = "detections"  # isarsoft master yolov4

LAYOUT_RAW_GRID = "raw_grid"  # ours and official export.py --grid: NMS still to do
LAYOUT_EFFICIENT_NMS = "efficient_nms"  # official export.py --end2end: NMS done in the TensorRT engine
LAYOUT_TENSORRTX_PROB = "tensorrtx_prob"  # a count + 1000 rows of 7, NMS still to do
LAYOUT_ISARSOFT_DETECTIONS = "isarsoft_detections"  # K rows of 7, normalised, nothing done
LAYOUT_NAMES = (LAYOUT_RAW_GRID, LAYOUT_EFFICIENT_NMS, LAYOUT_TENSORRTX_PROB, LAYOUT_ISARSOFT_DETECTIONS)
# the frames rectangular inference is shaped for: 4:3 photos and 16:9 video (ModelSpec.rect_buckets)
RECT_ASPECTS = (3 / 4, 9 / 16)
MAX_NMS_CANDIDATES = 30000  # candidates per image that reach NMS at most, as the official code: bounds NMS's work


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
    # the built-in network: "yolov7…" a layer table of models/yolov7_layers.py, "yolov4…" a cfg of models/darknet.py
    architecture: str
    input_size: Tuple[int, int]  # (height, width) the detector takes
    anchors: Tuple[Tuple[int, ...], ...]  # per level, pixel (w, h) pairs flattened, as in the official yaml
    strides: Tuple[int, ...] = (8, 16, 32)  # of the levels: P3, P4, P5
    labels: Tuple[str, ...] = COCO80_NAMES
    layout: str = LAYOUT_RAW_GRID
    scale_x_y: Tuple[float, ...] = ()  # darknet [yolo] scale_x_y per level (stride order); empty: 1.0 everywhere
    nms_top_k: int = 100  # LAYOUT_EFFICIENT_NMS: detections slots the engine's NMS returns (export.py --topk-all)
    plugins: Tuple[str, ...] = ()  # shared libraries the detector needs loaded into tritonserver (TensorRT plugins)
    width_multiple: float = 1.0
    depth_multiple: float = 1.0
    # how an image is fitted to the input (boxes.FITS): YOLOv7's letterbox as the official detect.py, or darknet's own
    # for the YOLOv4 family; the fill on the 0..255 scale (114 as detect.py; darknet fills with 0.5, i.e. 127.5)
    fit: str = "letterbox"
    pad_value: float = 114
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300
    max_batch_size: int = 32
    preferred_batch_sizes: Tuple[int, ...] = (4, 8, 16)
    max_queue_delay_us: int = 2000
    # rectangular inference: each image letterboxed as detect.py's default (auto=True) onto the smallest of
    # rect_buckets() that holds it, the detector taking those shapes; False: the fixed input_size square
    rect: bool = False

    @property
    def family(self) -> str:
        """"yolov7" (our PyTorch layer tables) or "yolov4" (built from a darknet cfg)."""
        return self.architecture.split("-")[0]

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
        """K in [N, K, 5+nc]: anchors × grid cells summed over the levels (-1 with ``rect``: it follows the shape)."""
        if self.rect:
            return -1
        h, w = self.input_size
        return sum(self.anchors_per_level * (h // s) * (w // s) for s in self.strides)

    @property
    def input_dims(self) -> Tuple[int, int, int]:
        """The detector input's per-image dims: 3 × input_size, or 3 × any shape with ``rect``."""
        return (3, -1, -1) if self.rect else (3, *self.input_size)

    @property
    def ensemble_name(self) -> str:
        return f"{self.name}_e2e"

    @property
    def preprocess_name(self) -> str:
        return f"{self.name}_preprocess"

    @property
    def postprocess_name(self) -> str:
        return f"{self.name}_postprocess"

    def rect_buckets(self) -> Tuple[Tuple[int, int], ...]:
        """The detector input shapes (h, w) of rectangular inference: the square, and for each aspect ratio of
        ``RECT_ASPECTS`` the canvas ``detect.py``'s ``letterbox(auto=True)`` gives a frame of that ratio (long side
        the input size's, short side up to a multiple of the largest stride), both ways up, square first."""
        side, stride = max(self.input_size), max(self.strides)
        shapes = [(side, side)]
        for ratio in RECT_ASPECTS:
            short = -(-round(side * ratio) // stride) * stride
            shapes += [s for s in ((short, side), (side, short)) if s not in shapes]
        return tuple(shapes)

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
        if self.fit not in FITS:
            raise ValueError(f"{self.name}: unknown fit {self.fit!r}; known: {', '.join(FITS)}")
        if self.rect and (h != w or self.fit != "letterbox" or self.layout != LAYOUT_RAW_GRID):
            raise ValueError(f"{self.name}: rectangular inference needs a square input_size, the letterbox fit and the "
                             f"raw_grid layout (detect.py's auto=True letterbox; YOLOv7's family)")
        if not 0.0 <= self.pad_value <= 255.0:
            raise ValueError(f"{self.name}: pad_value {self.pad_value} is not on the 0..255 scale")
        if self.layout not in LAYOUT_NAMES:
            raise ValueError(f"{self.name}: unknown layout {self.layout!r}; known: {', '.join(LAYOUT_NAMES)}")
        if self.scale_x_y and len(self.scale_x_y) != len(self.strides):
            raise ValueError(f"{self.name}: {len(self.scale_x_y)} scale_x_y values for {len(self.strides)} strides")
        if not 0.0 <= self.conf_threshold <= 1.0 or not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"{self.name}: thresholds must lie in [0, 1]")


# the COCO anchors of YOLOv4 and YOLOv7 (P3, P4, P5): pixel (w, h) pairs per level
COCO_ANCHORS = ((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401))

YOLOV7 = ModelSpec(
    name="yolov7",
    architecture="yolov7",
    input_size=(640, 640),
    anchors=COCO_ANCHORS,
)

# official cfg/training/yolov7-tiny.yaml (released yolov7-tiny.pt): 640 input, LeakyReLU(0.1), IDetect at strides
# 8/16/32 with the yaml's anchors.
YOLOV7_TINY = ModelSpec(
    name="yolov7_tiny",
    architecture="yolov7-tiny",
    input_size=(640, 640),
    anchors=((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326)),
)

# darknet yolov4.cfg: 608 input, Mish, SPP, PAN; [yolo] layers at strides 8/16/32 with scale_x_y 1.2/1.1/1.05. Its
# [net] has no letter_box: darknet stretches the image to the network size, and the published weights were trained
# and scored so.
YOLOV4 = ModelSpec(
    name="yolov4",
    architecture="yolov4",
    fit="stretch",
    pad_value=127.5,
    input_size=(608, 608),
    anchors=COCO_ANCHORS,
    scale_x_y=(1.2, 1.1, 1.05),
)

# darknet yolov4-tiny.cfg: 416 input, leaky, grouped routes; two [yolo] layers (masks 1,2,3 at stride 16 and 3,4,5
# at stride 32 of anchors 10,14 23,27 37,58 81,82 135,169 344,319), scale_x_y 1.05.
YOLOV4_TINY = ModelSpec(
    name="yolov4_tiny",
    architecture="yolov4-tiny",
    fit="stretch",
    pad_value=127.5,
    input_size=(416, 416),
    strides=(16, 32),
    anchors=((23, 27, 37, 58, 81, 82), (81, 82, 135, 169, 344, 319)),
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


@dataclasses.dataclass(frozen=True)
class DetectionParams:
    """What one request asks of the postprocess: defaults from the postprocess config's ``parameters`` (the spec's),
    overridable per request by Triton request parameters of these names. The options of the official ``detect.py``
    / ``test.py``: ``classes`` (keep only these class ids, as ``--classes``; empty: all), ``agnostic_nms`` (one NMS
    across classes, as ``--agnostic-nms``), ``multi_label`` (a box carries every class scoring above the
    threshold, as ``test.py`` scores COCO)."""

    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300
    classes: Tuple[int, ...] = ()
    agnostic_nms: bool = False
    multi_label: bool = False

    KEYS = ("conf_threshold", "iou_threshold", "max_detections", "classes", "agnostic_nms", "multi_label")

    def __post_init__(self):
        for key in ("conf_threshold", "iou_threshold"):
            value = getattr(self, key)
            if not (isinstance(value, float) and 0.0 <= value <= 1.0):
                raise ValueError(f"{key} must be a number in [0, 1], got {value!r}")
        if not (isinstance(self.max_detections, int) and 1 <= self.max_detections <= MAX_NMS_CANDIDATES):
            raise ValueError(f"max_detections must be an integer in [1, {MAX_NMS_CANDIDATES}], got {self.max_detections!r}")
        if not (isinstance(self.classes, tuple) and all(isinstance(c, int) and c >= 0 for c in self.classes)):
            raise ValueError(f"classes must be class ids >= 0, got {self.classes!r}")
        for key in ("agnostic_nms", "multi_label"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")

    @classmethod
    def of_spec(cls, spec: ModelSpec) -> "DetectionParams":
        return cls(spec.conf_threshold, spec.iou_threshold, spec.max_detections)

    def as_config(self) -> dict:
        """These params as the postprocess config's string ``parameters`` (what ``updated`` reads back)."""
        return {key: _config_text(getattr(self, key)) for key in self.KEYS}

    def updated(self, overrides: Optional[Mapping[str, object]], num_classes: Optional[int] = None) -> "DetectionParams":
        """These params with ``overrides`` applied; unknown keys, bad values and (given ``num_classes``) class ids
        the model does not have raise ValueError."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(self.KEYS))
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(self.KEYS)}")
        values = dataclasses.asdict(self)
        for key, raw in overrides.items():
            values[key] = _PARSERS[key](key, raw)
        if num_classes is not None and any(c >= num_classes for c in values["classes"]):
            raise ValueError(f"classes must be class ids of this model (0 to {num_classes - 1}), "
                             f"got {overrides.get('classes')!r}")
        return DetectionParams(**values)

    @classmethod
    def from_request_json(cls, defaults: "DetectionParams", parameters_json: str,
                          num_classes: Optional[int] = None) -> "DetectionParams":
        """Triton's ``request.parameters()`` is a JSON object string."""
        return defaults.updated(json.loads(parameters_json) if parameters_json else None, num_classes)


def _parse_number(key: str, raw: object, kind: type):
    # Triton config parameters arrive as strings; request parameters as JSON numbers or strings.
    if isinstance(raw, bool):
        raise ValueError(f"{key} must be a number, got {raw!r}")
    try:
        value = kind(raw) if kind is float else int(str(raw), 10)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {raw!r}")
    return value


def _parse_bool(key: str, raw: object) -> bool:
    # Triton request parameters have a bool type; config parameters and some clients send "true" / "false"
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0"):
        return raw.strip().lower() in ("true", "1")
    raise ValueError(f"{key} must be true or false, got {raw!r}")


def _parse_classes(key: str, raw: object) -> Tuple[int, ...]:
    # Triton request parameters hold no lists: a string of comma-separated ids, as detect.py --classes 0 2; one
    # integer is one id; an empty string keeps every class
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise ValueError(f"{key} must be comma-separated class ids such as \"0,2\", got {raw!r}")
    ids = []
    for part in raw.replace(" ", ",").split(","):
        if part:
            if not part.isdigit():
                raise ValueError(f"{key} must be comma-separated class ids such as \"0,2\", got {raw!r}")
            ids.append(int(part))
    return tuple(sorted(set(ids)))


def _config_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


_PARSERS = {
    "conf_threshold": lambda key, raw: _parse_number(key, raw, float),
    "iou_threshold": lambda key, raw: _parse_number(key, raw, float),
    "max_detections": lambda key, raw: _parse_number(key, raw, int),
    "classes": _parse_classes,
    "agnostic_nms": _parse_bool,
    "multi_label": _parse_bool,
}
