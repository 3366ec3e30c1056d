"""Drawing detections on an image (the CLI's ``-o``), and the generated image of ``dummy`` mode."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from .results import Detection


def class_color(class_id: int) -> Tuple[int, int, int]:
    """A stable, distinct BGR colour per class (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """Boxes and ``name score`` labels drawn on a BGR image (in place; returned for chaining)."""
    import cv2

    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    scale = max(0.4, min(height, width) / 1000)
    for d in detections:
        color = class_color(d.class_id)
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        label = f"{d.name} {d.score:.2f}"
        (tw, th), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = y1 - th - baseline if y1 - th - baseline >= 0 else y1  # above the box, or inside it at the top edge
        cv2.rectangle(image, (x1, top), (x1 + tw, top + th + baseline), color, cv2.FILLED)
        cv2.putText(image, label, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def dummy_image(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A generated JPEG (gradient, shapes, noise) to check the whole pipeline without a photo."""
    import cv2

    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    image = np.dstack([x, y, 255 - x]).astype(np.uint8)
    for _ in range(6):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(image, center, int(rng.integers(20, height // 4)), [int(c) for c in rng.integers(0, 256, 3)], -1)
    image = cv2.add(image, rng.integers(0, 30, image.shape, dtype=np.uint8))
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buffer.tobytes()
