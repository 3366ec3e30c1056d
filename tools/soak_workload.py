"""The soak's workload (`make soak`): the good images, the malformed inputs, and the schedule that mixes them."""
from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tools.perf import PHOTOS  # the photo names of the scikit-image wheel
from yolo_triton import specs

SCALES = (1.0, 0.5, 1.5)  # each photo at these scales, as JPEG and PNG: 30 distinct good images
BATCH_SIZES = (2, 3, 4)


def good_images(scales: Sequence[float] = SCALES) -> Dict[str, bytes]:
    """name → encoded bytes: every photo at every scale, as JPEG (quality 90) and PNG."""
    import cv2
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    images = {}
    for photo in PHOTOS:
        original = cv2.imread(str(folder / photo), cv2.IMREAD_COLOR)
        for scale in scales:
            height, width = (round(n * scale) for n in original.shape[:2])
            image = original if scale == 1 else cv2.resize(original, (width, height), interpolation=cv2.INTER_AREA)
            for ext, params in ((".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]), (".png", [])):
                ok, buffer = cv2.imencode(ext, image, params)
                assert ok, photo
                images[f"{Path(photo).stem}_{width}x{height}{ext}"] = buffer.tobytes()
    return images


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR declaring width×height, with (almost) no pixel data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def malformed_inputs(seed: int = 0) -> Dict[str, Tuple[bytes, str]]:
    """kind → (bytes, a substring the server's error message must contain); as in tests/server/test_bad_inputs.py."""
    from PIL import Image

    def save(image, fmt, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    rng = np.random.default_rng(seed)
    photo = Image.fromarray(rng.integers(0, 256, (133, 200, 3), dtype=np.uint8)).resize((200, 133))
    jpeg = save(photo, "JPEG", quality=92)
    return {
        "empty": (b"", "empty input"),
        "random_bytes": (b"\x00" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "cannot decode"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 3], "truncated JPEG"),
        "jpeg_header_only": (jpeg[:200], "cannot decode"),
        "text": (b"hello, this is not an image\n" * 20, "cannot decode"),
        "png_100kx100k": (png_declaring(100_000, 100_000), "too many pixels"),
        "png_12kx12k": (png_declaring(12_000, 12_000), "pixels, over the limit of"),
        "gif": (save(photo.convert("P"), "GIF"), "unsupported image format GIF"),
        "tiff": (save(photo, "TIFF"), "unsupported image format TIFF"),
    }


@dataclasses.dataclass(frozen=True)
class Planned:
    """One request of the schedule."""

    index: int
    kind: str  # good | batch_good | batch_mixed | malformed:<name>
    labels: Tuple[str, ...]  # the good image names or malformed kinds it holds, in order
    payloads: Tuple[bytes, ...]
    error: Optional[Tuple[str, ...]]  # substrings its error message must contain; None: it must succeed


def schedule(requests: int, good: Dict[str, bytes], malformed: Dict[str, Tuple[bytes, str]], malformed_share: float,
             batch_share: float, seed: int) -> List[Planned]:
    """Exactly round(requests × share) malformed and batch requests, at positions and with contents from ``seed``."""
    rng = np.random.default_rng(seed)
    n_bad, n_batch = round(requests * malformed_share), round(requests * batch_share)
    order = rng.permutation(requests)
    bad_at, batch_at = set(order[:n_bad].tolist()), set(order[n_bad:n_bad + n_batch].tolist())
    good_names, bad_names = sorted(good), sorted(malformed)
    plan = []
    for index in range(requests):
        if index in bad_at:
            name = bad_names[rng.integers(len(bad_names))]
            plan.append(Planned(index, f"malformed:{name}", (name,), (malformed[name][0],), (malformed[name][1],)))
        elif index in batch_at:
            size = int(rng.choice(BATCH_SIZES))
            labels = [good_names[i] for i in rng.integers(len(good_names), size=size)]
            payloads = [good[label] for label in labels]
            if bad_names and rng.random() < 0.5:
                where, name = int(rng.integers(size)), bad_names[rng.integers(len(bad_names))]
                labels[where], payloads[where] = name, malformed[name][0]
                error = (f"{specs.ENSEMBLE_INPUT}[{where}]: ", malformed[name][1])  # names the item and the problem
                plan.append(Planned(index, "batch_mixed", tuple(labels), tuple(payloads), error))
            else:
                plan.append(Planned(index, "batch_good", tuple(labels), tuple(payloads), None))
        else:
            name = good_names[rng.integers(len(good_names))]
            plan.append(Planned(index, "good", (name,), (good[name],), None))
    return plan
