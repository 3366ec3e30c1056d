"""Darknet cfg text: the parser (sections and their options, darknet's rules) and the generators of the built-in
yolov4.cfg / yolov4-tiny.cfg (the public darknet architectures, written out so that nobody needs a cfg file and no
copy of darknet's files ships here). The network built from the sections is in ``darknet.py``."""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

class DarknetError(ValueError):
    """A cfg, weights file or spec that does not fit; the message names the layer, line or file."""


# ----------------------------------------------------------------------------------------------------------------
# cfg parsing
# ----------------------------------------------------------------------------------------------------------------


class Section(dict):
    """One ``[type]`` section of a cfg: ``section["type"]`` and its options, as strings with white space removed
    (lists stay comma-separated: ``layers="-1,-3"``). ``index`` is its position in the cfg (the ``[net]``
    section is 0, so layer ``i`` is section ``i + 1``), ``line`` the line of its header, ``option_lines``
    the line of each option."""

    def __init__(self, kind: str, index: int, line: int):
        super().__init__(type=kind)
        self.index = index
        self.line = line
        self.option_lines: Dict[str, int] = {}


_HEADER = re.compile(r"^\[([A-Za-z_][A-Za-z0-9_-]*)\]$")


def parse_cfg(text: str) -> List[Section]:
    """Darknet cfg text → its sections, in order.

    As darknet reads it: ``#`` and ``;`` start comments (whole-line or trailing), blank lines are skipped, all
    white space inside a line is removed (``anchors = 12, 16,  19`` → ``"12,16,19"``). Malformed input raises
    :class:`DarknetError` naming the line (and the section it is in): an option outside any section, a line
    without ``=``, an empty key or value, an option given twice in one section, a bad header, no section at all.
    """
    sections: List[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.split(r"[#;]", raw, maxsplit=1)[0]
        line = "".join(line.split())
        if not line:
            continue
        if line.startswith("["):
            match = _HEADER.match(line)
            if not match:
                raise DarknetError(f"cfg line {number}: malformed section header {raw.strip()!r} (expected [name])")
            sections.append(Section(match.group(1).lower(), len(sections), number))
            continue
        where = f"cfg line {number}"
        if not sections:
            raise DarknetError(f"{where}: option {raw.strip()!r} outside any [section]")
        section = sections[-1]
        where += f" (section {section.index} [{section['type']}])"
        key, sep, value = line.partition("=")
        if not sep:
            raise DarknetError(f"{where}: expected key=value, got {raw.strip()!r}")
        if not key or not value:
            raise DarknetError(f"{where}: empty {'key' if not key else 'value'} in {raw.strip()!r}")
        if key == "type" or key in section:
            first = section.option_lines.get(key)
            raise DarknetError(f"{where}: option {key!r} given twice in one section"
                               + (f" (first at line {first})" if first else " ('type' is reserved)"))
        section[key] = value
        section.option_lines[key] = number
    if not sections:
        raise DarknetError("cfg holds no [section]")
    return sections


def _where(section: Mapping, index: Optional[int] = None) -> str:
    """'layer 3 [route] (cfg line 20)' — how errors name a section."""
    kind = section.get("type", "?")
    what = f"layer {index} [{kind}]" if index is not None else f"[{kind}] section"
    line = getattr(section, "line", None)
    return f"{what} (cfg line {line})" if line else what


class _Options:
    """Typed access to one section's options; reports options nobody read (see :meth:`finish`)."""

    def __init__(self, section: Mapping, where: str):
        self.section = section
        self.where = where
        self.used = {"type"}

    def _raw(self, key: str):
        self.used.add(key)
        return self.section.get(key)

    def _convert(self, key: str, raw: str, kind, what: str):
        try:
            return kind(raw)
        except ValueError:
            raise DarknetError(f"{self.where}: option {key}={raw!r} is not {what}") from None

    def _scalar(self, key: str, default, kind, what: str):
        raw = self._raw(key)
        if raw is None:
            if default is None:
                raise DarknetError(f"{self.where}: option {key!r} is required")
            return default
        return raw if kind is None else self._convert(key, raw, kind, what)

    def integer(self, key: str, default: Optional[int] = None) -> int:
        return self._scalar(key, default, int, "an integer")

    def number(self, key: str, default: Optional[float] = None) -> float:
        return self._scalar(key, default, float, "a number")

    def text(self, key: str, default: Optional[str] = None) -> str:
        return self._scalar(key, default, None, "")

    def values(self, key: str, kind=int, required: bool = True) -> Optional[list]:
        raw = self._raw(key)
        if raw is None:
            if required:
                raise DarknetError(f"{self.where}: option {key!r} is required")
            return None
        items = [item for item in raw.split(",") if item]  # darknet tolerates a trailing comma
        what = "a comma-separated list of integers" if kind is int else "a comma-separated list of numbers"
        return [self._convert(key, item, kind, what) for item in items]

    def require(self, key: str, allowed, kind=int) -> None:
        """An option that would change the result: only the value(s) in ``allowed`` (darknet's neutral value) are
        implemented."""
        allowed = allowed if isinstance(allowed, (tuple, list, set)) else (allowed,)
        raw = self._raw(key)
        if raw is None:
            return
        value = self._convert(key, raw, kind, "a number" if kind is not str else "text")
        if value not in allowed:
            raise DarknetError(f"{self.where}: {key}={raw} is not supported (only {', '.join(map(str, allowed))})")

    def ignore(self, keys: Iterable[str]) -> None:
        self.used.update(keys)

    def finish(self) -> None:
        unknown = [key for key in self.section if key not in self.used]
        if unknown:
            raise DarknetError(f"{self.where}: unsupported option(s) {', '.join(sorted(unknown))}")


# Options darknet reads for any layer that only matter for training.
_TRAINING_OPTIONS = ("stopbackward", "train_only_bn", "learning_rate", "onlyforward", "dont_update",
                     "burnin_update", "smooth", "clip", "dynamic_minibatch", "stream", "wait_stream")
# [yolo] options that only matter for the loss, for training-time augmentation or for darknet's own NMS.
_YOLO_TRAINING_OPTIONS = (
    "jitter", "ignore_thresh", "truth_thresh", "iou_thresh", "random", "resize", "nms_kind", "beta_nms",
    "iou_loss", "iou_normalizer", "cls_normalizer", "obj_normalizer", "delta_normalizer", "max_delta",
    "counters_per_class", "label_smooth_eps", "focal_loss", "objectness_smooth", "max", "map",
    "track_history_size", "sim_thresh", "dets_for_track", "dets_for_show", "track_ciou_norm", "embedding_layer",
    "show_details", "rescore", "uc_normalizer", "iou_thresh_kind", "beta1", "random_init", "absolute",
)


# ----------------------------------------------------------------------------------------------------------------
# Built-in cfgs (generated; the public darknet yolov4.cfg / yolov4-tiny.cfg architectures)
# ----------------------------------------------------------------------------------------------------------------


class _CfgWriter:
    """Appends sections and knows the index of the layer it will write next."""

    def __init__(self, width: int, height: int):
        self.sections = [f"[net]\nwidth={width}\nheight={height}\nchannels=3"]

    @property
    def next_index(self) -> int:
        return len(self.sections) - 1

    def add(self, kind: str, **options) -> int:
        lines = [f"[{kind}]"] + [f"{key}={value}" for key, value in options.items()]
        self.sections.append("\n".join(lines))
        return self.next_index - 1

    def conv(self, filters: int, size: int, stride: int = 1, activation: str = "leaky", bn: bool = True) -> int:
        options = {"batch_normalize": 1} if bn else {}
        return self.add("convolutional", **options, filters=filters, size=size, stride=stride, pad=1,
                        activation=activation)

    def route(self, *layers: int, **options) -> int:
        return self.add("route", layers=",".join(map(str, layers)), **options)

    def yolo(self, mask: Sequence[int], anchors: Sequence[int], classes: int, scale_x_y: float) -> int:
        self.conv(len(mask) * (classes + 5), 1, activation="linear", bn=False)
        return self.add("yolo", mask=",".join(map(str, mask)), anchors=", ".join(map(str, anchors)),
                        classes=classes, num=len(anchors) // 2, scale_x_y=scale_x_y)

    def text(self) -> str:
        return "\n\n".join(self.sections) + "\n"


YOLOV4_ANCHORS = (12, 16, 19, 36, 40, 28, 36, 75, 76, 55, 72, 146, 142, 110, 192, 243, 459, 401)
YOLOV4_TINY_ANCHORS = (10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319)


def _yolov4_cfg(w: _CfgWriter, classes: int) -> None:
    # CSPDarknet53 (Mish): a stem conv, then 5 CSP stages of (output channels, residual blocks).
    w.conv(32, 3, activation="mish")
    stage_outputs = []
    for stage, (c, n) in enumerate(((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))):
        part = c if stage == 0 else c // 2  # the first stage keeps full width in both CSP parts
        w.conv(c, 3, 2, "mish")  # downsample
        w.conv(part, 1, activation="mish")  # cross-stage part
        w.route(-2)
        w.conv(part, 1, activation="mish")
        for _ in range(n):
            w.conv(c // 2, 1, activation="mish")
            w.conv(part, 3, activation="mish")
            w.add("shortcut", **{"from": -3}, activation="linear")
        w.conv(part, 1, activation="mish")
        w.route(-1, -(3 * n + 4))  # this part's end, the cross-stage part
        stage_outputs.append(w.conv(c, 1, activation="mish"))

    def five(c: int) -> int:  # the neck's 1x1/3x3 x5 block (leaky)
        for k in range(5):
            last = w.conv(c if k % 2 == 0 else 2 * c, 1 if k % 2 == 0 else 3)
        return last

    # SPP on the last stage
    w.conv(512, 1)
    w.conv(1024, 3)
    w.conv(512, 1)
    for k, size in enumerate((5, 9, 13)):
        if k:
            w.route(-2 * k)  # back to the conv before the pools
        w.add("maxpool", stride=1, size=size)
    w.route(-1, -3, -5, -6)
    w.conv(512, 1)
    w.conv(1024, 3)
    p5 = w.conv(512, 1)
    # PAN top-down: P5 → P4 → P3
    tops = [p5]
    for c, lateral in ((256, stage_outputs[3]), (128, stage_outputs[2])):
        w.conv(c, 1)
        w.add("upsample", stride=2)
        w.route(lateral)
        w.conv(c, 1)
        w.route(-1, -3)
        tops.append(five(c))
    # heads, bottom-up: P3 (stride 8), P4, P5
    scales = (1.2, 1.1, 1.05)
    w.conv(256, 3)
    w.yolo((0, 1, 2), YOLOV4_ANCHORS, classes, scales[0])
    for level, c in ((1, 256), (2, 512)):
        w.route(-4)
        down = w.conv(c, 3, 2)
        w.route(-1, tops[2 - level] - (down + 1))
        five(c)
        w.conv(2 * c, 3)
        w.yolo(tuple(range(3 * level, 3 * level + 3)), YOLOV4_ANCHORS, classes, scales[level])


def _yolov4_tiny_cfg(w: _CfgWriter, classes: int) -> None:
    w.conv(32, 3, 2)
    w.conv(64, 3, 2)
    for c in (64, 128, 256):  # CSP blocks on grouped routes
        w.conv(c, 3)
        w.route(-1, groups=2, group_id=1)
        w.conv(c // 2, 3)
        w.conv(c // 2, 3)
        w.route(-1, -2)
        lateral = w.conv(c, 1)
        w.route(-6, -1)
        w.add("maxpool", size=2, stride=2)
    w.conv(512, 3)
    w.conv(256, 1)
    w.conv(512, 3)
    w.yolo((3, 4, 5), YOLOV4_TINY_ANCHORS, classes, 1.05)  # stride 32 first, as in the darknet file
    w.route(-4)
    w.conv(128, 1)
    w.add("upsample", stride=2)
    w.route(-1, lateral)
    w.conv(256, 3)
    w.yolo((1, 2, 3), YOLOV4_TINY_ANCHORS, classes, 1.05)


BUILTIN_CFGS = {"yolov4": (_yolov4_cfg, 608), "yolov4-tiny": (_yolov4_tiny_cfg, 416)}


def builtin_cfg(name: str, classes: int = 80, width: Optional[int] = None, height: Optional[int] = None) -> str:
    """The darknet cfg text of a public architecture, generated: ``"yolov4"`` (yolov4.cfg: 608x608,
    CSPDarknet53 with Mish, SPP, PAN, 162 layers with [yolo] at 139/150/161) or ``"yolov4-tiny"``
    (yolov4-tiny.cfg: 416x416, 38 layers with [yolo] at 30/37). Training-only options are left out."""
    try:
        generate, size = BUILTIN_CFGS[name]
    except KeyError:
        raise DarknetError(f"unknown built-in cfg {name!r}; known: {', '.join(BUILTIN_CFGS)}") from None
    if classes < 1:
        raise DarknetError(f"classes must be >= 1, got {classes}")
    writer = _CfgWriter(width or size, height or size)
    generate(writer, classes)
    return writer.text()
