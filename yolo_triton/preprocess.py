"""Encoded bytes → the detector's input tensor: decode with limits, letterbox, RGB, 0..1, NCHW.

Semantics follow the official YOLOv7 ``detect.py`` with ``letterbox(auto=False)``: keep aspect, resize with
bilinear interpolation, pad centred with grey 114. The mapping back to original pixels (``LetterboxMeta``) is
the one the official ``scale_coords`` computes, so boxes come out exactly where the official code puts them.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import io

import numpy as np
from PIL import Image

SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP")  # Pillow's names; MPO is a multi-picture JPEG
META_SIZE = 5  # original height, original width, gain, pad x, pad y — the LETTERBOX_META tensor


class ImageDecodeError(ValueError):
    """The bytes are not an image we accept; the message says why (it goes back to the client)."""


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what one request may make the server decode."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000  # 100 MP, e.g. 10000×10000; larger is refused from the header, before decoding

    def __post_init__(self):
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("decode limits must be positive")


@dataclasses.dataclass(frozen=True)
class LetterboxMeta:
    """How a letterboxed image maps back to its original: original = (letterboxed - pad) / gain."""

    height: int
    width: int
    gain: float
    pad_x: float
    pad_y: float

    def to_array(self) -> np.ndarray:
        return np.array([self.height, self.width, self.gain, self.pad_x, self.pad_y], dtype=np.float32)

    @classmethod
    def from_array(cls, values) -> "LetterboxMeta":
        h, w, gain, pad_x, pad_y = (float(v) for v in np.asarray(values).reshape(META_SIZE))
        return cls(int(round(h)), int(round(w)), gain, pad_x, pad_y)


@dataclasses.dataclass(frozen=True)
class Header:
    """What an encoded image's header declares (read by Pillow without decoding the pixels)."""

    format: str  # Pillow's name: JPEG, MPO, PNG, BMP, WEBP
    width: int
    height: int
    orientation: int = 1  # EXIF orientation (1 = upright), for decoders that do not apply it themselves

    @property
    def is_jpeg(self) -> bool:
        return self.format in ("JPEG", "MPO")


def check_encoded(data, limits: DecodeLimits = DecodeLimits()) -> Tuple[np.ndarray, Header]:
    """Validate encoded bytes before any decoder sees them: type, size, a supported format, declared pixels.

    Returns the bytes as a uint8 array and the header. Every decoder (OpenCV here, nvJPEG on the GPU) goes
    through this, so limits and error messages are the same on every path.
    """
    if not isinstance(data, (bytes, bytearray, memoryview, np.ndarray)):
        raise ImageDecodeError(f"expected encoded image bytes, got {type(data).__name__}")
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    if buffer.size == 0:
        raise ImageDecodeError("empty input: 0 bytes")
    if buffer.size > limits.max_bytes:
        raise ImageDecodeError(f"image is {buffer.size} bytes, over the limit of {limits.max_bytes}")
    return buffer, _read_header(buffer, limits)


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Decode JPEG/PNG/BMP/WebP bytes to an H×W×3 uint8 BGR image.

    Grayscale is expanded to 3 channels, alpha is dropped, 16-bit is scaled to 8-bit, and EXIF orientation is
    applied — all by OpenCV's ``IMREAD_COLOR``, the same call the official ``detect.py`` makes through
    ``cv2.imread``, so boxes match what users get from the reference code.
    """
    import cv2  # here, not at the top: the GPU path (yolo_triton.gpu) imports this module and never needs OpenCV

    buffer, _ = check_encoded(data, limits)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise undecodable(buffer)
    height, width = image.shape[:2]
    if height * width > limits.max_pixels:
        raise ImageDecodeError(f"image is {width}x{height} = {height * width} pixels, over the limit of {limits.max_pixels}")
    return image


def undecodable(buffer: np.ndarray) -> ImageDecodeError:
    return ImageDecodeError(
        f"cannot decode {buffer.size} bytes as an image (supported: JPEG, PNG, BMP, WebP; first bytes {bytes(buffer[:8]).hex()})"
    )


EXIF_ORIENTATION = 0x0112


def _read_header(buffer: np.ndarray, limits: DecodeLimits) -> Header:
    """Refuse a decompression bomb from its header: a few hundred bytes can declare gigapixels.

    Pillow's ``Image.open`` reads the header only. Only the formats we support pass; anything else is refused
    here, so no decoder ever decodes a size nobody checked.
    """
    data = buffer.tobytes()
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height, kind = *header.size, header.format
            orientation = header.getexif().get(EXIF_ORIENTATION, 1) if kind in ("JPEG", "MPO") else 1
    except Image.DecompressionBombError as error:  # Pillow's own cap, far above ours: still a bomb
        raise ImageDecodeError(f"image declares too many pixels: {error}") from None
    except Exception:  # a header Pillow cannot read: refuse rather than let a decoder decode an unchecked size
        raise undecodable(buffer) from None
    if kind not in SUPPORTED_FORMATS:  # e.g. HDR, PFM, PPM: OpenCV would decode them without our size check
        raise ImageDecodeError(f"unsupported image format {kind} (supported: JPEG, PNG, BMP, WebP)")
    if kind in ("JPEG", "MPO") and data.rfind(b"\xff\xd9") < 2:
        # libjpeg decodes a cut-off JPEG without complaint, filling the missing rows from whatever memory holds:
        # boxes that vary from call to call. Refused instead.
        raise ImageDecodeError(f"truncated JPEG: {len(data)} bytes and no end-of-image marker")
    if width * height > limits.max_pixels:
        raise ImageDecodeError(f"image declares {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}")
    return Header(kind, width, height, int(orientation) if orientation in range(1, 9) else 1)


def letterbox_meta(original_hw: Tuple[int, int], target_hw: Tuple[int, int]) -> LetterboxMeta:
    """Gain and padding as the official ``scale_coords`` derives them from the two shapes."""
    h0, w0 = original_hw
    th, tw = target_hw
    gain = min(th / h0, tw / w0)
    return LetterboxMeta(h0, w0, gain, (tw - w0 * gain) / 2, (th - h0 * gain) / 2)


def letterbox(image: np.ndarray, target_hw: Tuple[int, int], pad_value: int = 114) -> Tuple[np.ndarray, LetterboxMeta]:
    """Resize keeping aspect ratio and pad to ``target_hw``, centred (official letterbox, auto=False)."""
    import cv2

    h0, w0 = image.shape[:2]
    th, tw = target_hw
    ratio = min(th / h0, tw / w0)
    # at least one pixel: a 1×3000 strip would otherwise round to height 0 and make cv2.resize throw
    new_w, new_h = max(1, int(round(w0 * ratio))), max(1, int(round(h0 * ratio)))
    if (new_w, new_h) != (w0, h0):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (tw - new_w) / 2, (th - new_h) / 2
    # the ±0.1 splits an odd padding the same way the official code does
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    padded = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return padded, letterbox_meta((h0, w0), target_hw)


def to_chw_float(image_bgr: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 BGR → 3×H×W float32 RGB in 0..1, the detector's input layout."""
    return np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def preprocess_image(
    data: bytes, target_hw: Tuple[int, int], pad_value: int = 114, limits: DecodeLimits = DecodeLimits()
) -> Tuple[np.ndarray, LetterboxMeta]:
    """Encoded bytes → (3×H×W float32 tensor, letterbox meta)."""
    padded, meta = letterbox(decode_image(data, limits), target_hw, pad_value)
    return to_chw_float(padded), meta
