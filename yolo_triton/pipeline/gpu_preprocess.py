"""Encoded images → the detector's input batch on the GPU: the semantics of ``pipeline/preprocess.py``.

- decode: JPEG with nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``, all images of a batch in one call);
  PNG/BMP/WebP (and any host without CUDA) with the CPU decoder, then uploaded. Every input goes through the
  same header check and limits first (``decode.check_encoded``); EXIF orientation is applied as OpenCV does.
- letterbox: the geometry of ``boxes.Letterbox``; bilinear resize (half-pixel centres, no antialias, as
  ``cv2.INTER_LINEAR``), rounded to 8-bit levels as OpenCV's uint8 output is, padded with 114, RGB, 0..1 —
  straight into one batch tensor per canvas shape (one shape, the square, unless rectangular inference gives each
  request the bucket that holds its images: ``boxes.rect_canvas``, as the CPU preprocess).

Not bit-identical to the CPU path: nvJPEG's IDCT and OpenCV's fixed-point resize differ from libjpeg's and from
float bilinear by a level here and there, so boxes agree to a tolerance (tests/gpu/test_gpu.py).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..boxes import META_SIZE, Letterbox, LetterboxMeta, rect_canvas
from .decode import DecodeLimits, Header, ImageDecodeError, check_encoded, decode_image


def _orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (2..8) to a C×H×W image, as OpenCV's IMREAD_COLOR does.

    2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise.
    """
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-1, -2)
    if orientation in (2, 3, 6, 7):
        image = image.flip(-1)
    if orientation in (3, 4, 7, 8):
        image = image.flip(-2)
    return image.contiguous()


def decode_images(items: Sequence[bytes], device: Union[str, torch.device], limits: DecodeLimits = DecodeLimits()
                  ) -> List[Union[torch.Tensor, ImageDecodeError]]:
    """Encoded images → RGB uint8 3×H×W tensors on ``device`` (or the error of each image that fails)."""
    device = torch.device(device)
    out: List[Union[torch.Tensor, ImageDecodeError, None]] = [None] * len(items)
    checked: List[Tuple[int, np.ndarray, Header]] = []
    for index, data in enumerate(items):
        try:
            buffer, header = check_encoded(data, limits)
            checked.append((index, buffer, header))
        except ImageDecodeError as error:
            out[index] = error
    jpegs = [(i, b, h) for i, b, h in checked if h.is_jpeg] if device.type == "cuda" else []
    if jpegs:
        from torchvision.io import ImageReadMode, decode_jpeg

        datas = [torch.from_numpy(b.copy()) for _, b, _ in jpegs]  # writable: torch refuses read-only buffers
        try:
            decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad JPEG fails nvJPEG's whole batch: decode one by one to find it
            decoded = []
            for data in datas:
                try:
                    decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
        for (index, buffer, header), image in zip(jpegs, decoded):
            if image is None:  # nvJPEG refused it (progressive/corrupt): the CPU decoder decides
                out[index] = None
                continue
            out[index] = _orient(image, header.orientation)
    for index, buffer, header in checked:
        if out[index] is None:
            try:  # CPU path: OpenCV (BGR, EXIF applied) → RGB tensor
                out[index] = torch.from_numpy(np.ascontiguousarray(decode_image(buffer, limits)[:, :, ::-1].transpose(2, 0, 1))).to(device)
            except ImageDecodeError as error:
                out[index] = error
    return out


def letterbox_into(image: torch.Tensor, canvas: torch.Tensor, pad_value: float = 114, fit: str = "letterbox",
                   scale_hw: Optional[Tuple[int, int]] = None) -> LetterboxMeta:
    """Fit a RGB uint8 3×h×w image into ``canvas`` (3×H×W float, written in full) as 0..1 values. ``scale_hw``:
    ``Letterbox``'s (a rectangular canvas with the square's gain)."""
    _, h0, w0 = image.shape
    geometry = Letterbox((h0, w0), tuple(canvas.shape[-2:]), fit, scale_hw)
    new_h, new_w = geometry.resized_hw
    top, _, left, _ = geometry.padding
    canvas.fill_(pad_value / 255.0)
    if (new_h, new_w) != (h0, w0):
        resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                                antialias=False)[0]
        resized = resized.round_().clamp_(0, 255)  # OpenCV's uint8 output levels
    else:
        resized = image.float()
    canvas[:, top : top + new_h, left : left + new_w] = resized / 255.0
    return geometry.meta


def letterbox_batch(images: Sequence[Union[torch.Tensor, Exception]], canvas_hw: Tuple[int, int], device,
                    pad_value: float = 114, dtype: torch.dtype = torch.float32, fit: str = "letterbox",
                    scale_hw: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, np.ndarray]:
    """Decoded images → (N×3×H×W tensor on ``device``, metas [N, META_SIZE] float32 numpy); the row of an error
    is left unwritten."""
    batch = torch.empty((len(images), 3, *canvas_hw), dtype=dtype, device=device)
    metas = np.zeros((len(images), META_SIZE), np.float32)
    for index, image in enumerate(images):
        if not isinstance(image, Exception):
            metas[index] = letterbox_into(image, batch[index], pad_value, fit, scale_hw).to_array()
    return batch, metas


def preprocess_batch(items: Sequence[bytes], target_hw: Tuple[int, int], device, pad_value: float = 114,
                     limits: DecodeLimits = DecodeLimits(), dtype: torch.dtype = torch.float32, fit: str = "letterbox"):
    """Encoded images → (N×3×H×W tensor on ``device``, metas [N, META_SIZE] float32 numpy, per-image error or
    None)."""
    decoded = decode_images(items, device, limits)
    batch, metas = letterbox_batch(decoded, target_hw, device, pad_value, dtype, fit)
    return batch, metas, [image if isinstance(image, Exception) else None for image in decoded]


def preprocess_requests(requests: Sequence[Sequence[bytes]], target_hw: Tuple[int, int], device,
                        pad_value: float = 114, limits: DecodeLimits = DecodeLimits(),
                        dtype: torch.dtype = torch.float32, fit: str = "letterbox",
                        rect_buckets: Optional[Sequence[Tuple[int, int]]] = None, stride: int = 32) -> list:
    """The encoded images of each request → per request (N×3×H×W tensor, metas [N, META_SIZE]), or (index, error)
    of its first image that fails. All images are decoded in one go; a tensor is a view of one batch per canvas.

    ``rect_buckets``: rectangular inference — a request's images go onto the smallest bucket that holds each of
    their ``detect.py`` canvases, with the ``target_hw`` square's gain; None: every image on the square."""
    sizes = [len(items) for items in requests]
    decoded = decode_images([data for items in requests for data in items], device, limits)
    starts = np.cumsum([0] + sizes).tolist()
    results: list = [None] * len(requests)
    by_canvas = {}
    for r, (start, stop) in enumerate(zip(starts, starts[1:])):
        failed = [(i, image) for i, image in enumerate(decoded[start:stop]) if isinstance(image, Exception)]
        if failed:
            results[r] = failed[0]
            continue
        canvas = tuple(target_hw)
        if rect_buckets:
            canvas = rect_canvas([tuple(image.shape[1:]) for image in decoded[start:stop]], rect_buckets, target_hw,
                                 stride)
        by_canvas.setdefault(canvas, []).append(r)
    for canvas, members in by_canvas.items():
        images = [image for r in members for image in decoded[starts[r] : starts[r + 1]]]
        batch, metas = letterbox_batch(images, canvas, device, pad_value, dtype, fit,
                                       tuple(target_hw) if rect_buckets else None)
        offset = 0
        for r in members:
            results[r] = batch[offset : offset + sizes[r]], metas[offset : offset + sizes[r]]
            offset += sizes[r]
    return results


def warm_up_preprocess(target_hw: Tuple[int, int], device: torch.device, pad_value: float = 114,
                       limits: DecodeLimits = DecodeLimits(), dtype: torch.dtype = torch.float32,
                       fit: str = "letterbox") -> None:
    """Run ``preprocess_batch`` once on two synthetic 640×480 JPEGs, at load.

    A process's first nvJPEG decode and first letterbox load nvJPEG and CUDA's lazily loaded kernels: a stall of
    more than a second (docs/gpu.md) that the first request, and a benchmark's first window, would otherwise pay."""
    import cv2

    y, x = np.mgrid[0:480, 0:640]
    pattern = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", pattern)[1].tobytes()
    preprocess_batch([jpeg], target_hw, device, pad_value, limits, dtype, fit)
    preprocess_batch([jpeg, jpeg], target_hw, device, pad_value, limits, dtype, fit)
    torch.cuda.synchronize(device)
