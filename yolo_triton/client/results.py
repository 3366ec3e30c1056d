"""What a request gives back: ``Detection`` boxes, the ``ItemResult`` of ``Detector.stream``, and the reading of the
ensemble's outputs and of an item's bytes and image size on the client side."""
from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from PIL import Image as PILImage

from .errors import ClientError, InputError

Item = Union[bytes, bytearray, memoryview, str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class Detection:
    """One box in the original image's pixels (x1, y1 top-left; x2, y2 bottom-right)."""

    class_id: int
    name: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def box(self) -> Tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def to_dict(self) -> Dict[str, Any]:
        return {"class_id": self.class_id, "name": self.name, "score": round(self.score, 5),
                "box": [round(v, 2) for v in self.box]}


@dataclasses.dataclass(frozen=True)
class ItemResult:
    """What ``Detector.stream`` yields per item: its position, the item as given, and detections or an error."""

    index: int
    item: Any
    detections: Optional[List[Detection]] = None
    error: Optional[ClientError] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_result(result) -> List[List[Detection]]:
    """The ensemble's outputs (one request of B images) → B lists of detections, padding dropped."""
    counts = result.as_numpy("num_detections").reshape(-1)
    boxes, scores = result.as_numpy("boxes"), result.as_numpy("scores")
    classes, names = result.as_numpy("classes"), result.as_numpy("class_names")
    out = []
    for i, n in enumerate(counts.tolist()):
        out.append([
            Detection(int(c), name.decode() if isinstance(name, bytes) else str(name), float(s), *map(float, box))
            for box, s, c, name in zip(boxes[i, :n], scores[i, :n], classes[i, :n], names[i, :n])
        ])
    return out


def read_item(item: Item) -> bytes:
    """Encoded bytes of an item: bytes-like as they are, a path's file contents."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (str, os.PathLike)):
        try:
            return Path(item).read_bytes()
        except OSError as error:
            raise InputError(f"cannot read {os.fspath(item)}: {error.strerror or error}") from error
    raise InputError(f"expected encoded image bytes or a file path, got {type(item).__name__}")


def image_size(data: Union[bytes, str, os.PathLike]) -> Optional[Tuple[int, int]]:
    """(width, height) of the upright image from its header only (Pillow, no decode); EXIF orientation 5–8 swaps
    the two, as the server's decode does. None if Pillow cannot read the header."""
    try:
        with PILImage.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 — a header Pillow cannot read: the size is simply unknown
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
