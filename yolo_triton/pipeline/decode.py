"""Encoded bytes → a decoded image, within limits: the checks every decoder (OpenCV here, nvJPEG on the GPU) goes
through first, so that limits and error messages are the same on every path.

The header is read before any pixel is decoded: a few hundred bytes can declare gigapixels.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Tuple

import numpy as np
from PIL import Image

SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP")  # Pillow's names; MPO is a multi-picture JPEG


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
    import cv2  # here, not at the top: the GPU preprocess imports this module and decodes JPEGs with nvJPEG

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
