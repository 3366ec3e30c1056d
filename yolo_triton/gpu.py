"""Pre- and postprocessing in PyTorch, on the GPU: the semantics of ``preprocess.py`` / ``postprocess.py``.

- decode: JPEG with nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``, all images of a batch in one call);
  PNG/BMP/WebP (and any host without CUDA) with the CPU decoder, then uploaded. Every input goes through the
  same header check and limits first (``preprocess.check_encoded``); EXIF orientation is applied as OpenCV does.
- letterbox: bilinear resize (half-pixel centres, no antialias, as ``cv2.INTER_LINEAR``), rounded to 8-bit
  levels as OpenCV's uint8 output is, padded with 114, RGB, 0..1 — straight into one batch tensor.
- postprocess: obj × cls, best class, thresholds, at most ``MAX_NMS_CANDIDATES`` per image (as the CPU path), NMS
  per image and class in one ``torchvision.ops.nms`` call per chunk of images (boxes offset per image and class, in
  float64 so the offsets cost no precision; a chunk bounds NMS's memory), ``max_det``, scale back and clip; only
  the final boxes go to the host, in one copy.

Not bit-identical to the CPU path: nvJPEG's IDCT and OpenCV's fixed-point resize differ from libjpeg's and
from float bilinear by a level here and there, so boxes agree to a tolerance (tests/test_gpu.py).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .postprocess import MAX_NMS_CANDIDATES, DetectionParams, Detections
from .preprocess import DecodeLimits, Header, ImageDecodeError, LetterboxMeta, check_encoded, decode_image, letterbox_meta

# a coordinate offset larger than any box, per (image, class) group, so that one NMS call keeps groups apart
GROUP_OFFSET = 1 << 16
# candidates per NMS call: torchvision's CUDA NMS builds an N × N/64-word bit mask for its N boxes (N²/8 bytes: 32,768
# boxes → 128 MiB), so one call over a whole batch at a low conf_threshold (every grid row a candidate: 64 images of
# YOLOv7-640 → 1.6 M boxes) would ask for ~300 GiB. Images are independent: they go in consecutive chunks instead.
NMS_CHUNK_CANDIDATES = 1 << 15


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


def letterbox_into(image: torch.Tensor, canvas: torch.Tensor, pad_value: int = 114) -> LetterboxMeta:
    """Letterbox a RGB uint8 3×h×w image into ``canvas`` (3×H×W float, written in full) as 0..1 values."""
    _, h0, w0 = image.shape
    th, tw = canvas.shape[-2:]
    ratio = min(th / h0, tw / w0)
    new_w, new_h = max(1, int(round(w0 * ratio))), max(1, int(round(h0 * ratio)))
    dw, dh = (tw - new_w) / 2, (th - new_h) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    canvas.fill_(pad_value / 255.0)
    if (new_h, new_w) != (h0, w0):
        resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                                antialias=False)[0]
        resized = resized.round_().clamp_(0, 255)  # OpenCV's uint8 output levels
    else:
        resized = image.float()
    canvas[:, top : top + new_h, left : left + new_w] = resized / 255.0
    return letterbox_meta((h0, w0), (th, tw))


def preprocess_batch(items: Sequence[bytes], target_hw: Tuple[int, int], device, pad_value: int = 114,
                     limits: DecodeLimits = DecodeLimits(), dtype: torch.dtype = torch.float32):
    """Encoded images → (N×3×H×W tensor on ``device``, metas [N, 5] float32 numpy, per-image error or None)."""
    decoded = decode_images(items, device, limits)
    batch = torch.empty((len(items), 3, *target_hw), dtype=dtype, device=device)
    metas = np.zeros((len(items), 5), np.float32)
    errors: List[Optional[Exception]] = [None] * len(items)
    for index, image in enumerate(decoded):
        if isinstance(image, Exception):
            errors[index] = image
            continue
        metas[index] = letterbox_into(image, batch[index], pad_value).to_array()
    return batch, metas, errors


def nms_chunks(counts: Sequence[int], iou_thresholds: Sequence[float], budget: Optional[int] = None
               ) -> List[Tuple[int, int]]:
    """Consecutive image ranges ``[start, stop)``, one NMS call each: one IoU threshold throughout, and at most
    ``budget`` (default ``NMS_CHUNK_CANDIDATES``) candidates in all (an image with more than that goes alone)."""
    budget = NMS_CHUNK_CANDIDATES if budget is None else budget
    chunks: List[Tuple[int, int]] = []
    start, total = 0, 0
    for index, (count, threshold) in enumerate(zip(counts, iou_thresholds)):
        if index > start and (threshold != iou_thresholds[start] or total + count > budget):
            chunks.append((start, index))
            start, total = index, 0
        total += count
    if len(counts) > start:
        chunks.append((start, len(counts)))
    return chunks


def top_candidates_per_image(image_idx: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor, limit: int
                             ) -> torch.Tensor:
    """Indices of each image's ``limit`` best candidates, image by image (as the CPU path's stable sort by score
    and cut at ``MAX_NMS_CANDIDATES``; ties keep grid order)."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(image_idx[order], stable=True)]  # image-major, best score first within an image
    first = torch.cumsum(counts, 0) - counts  # where each image's candidates start in ``order``
    rank = torch.arange(len(order), device=order.device) - first[image_idx[order]]
    return order[rank < limit]


def postprocess_batch(predictions: torch.Tensor, metas: np.ndarray, params: Sequence[DetectionParams]) -> List[Detections]:
    """Raw-grid predictions [N, K, 5+nc] (any device) + letterbox metas → detections per image (numpy, host).

    ``params`` per image (requests may set their own thresholds)."""
    from torchvision.ops import nms

    n, _, width = predictions.shape
    device = predictions.device
    conf = torch.tensor([p.conf_threshold for p in params], device=device, dtype=predictions.dtype)
    # candidates come out image-major (nonzero walks the batch in order): each image's are one contiguous run
    image_idx, row_idx = (predictions[..., 4] > conf[:, None]).nonzero(as_tuple=True)
    rows = predictions[image_idx, row_idx].float()
    class_scores = rows[:, 5:] * rows[:, 4:5]
    scores, classes = class_scores.max(1)
    keep = scores > conf[image_idx].float()
    rows, scores, classes, image_idx = rows[keep], scores[keep], classes[keep], image_idx[keep]
    counts = torch.bincount(image_idx, minlength=n)
    per_image = counts.tolist()
    if max(per_image, default=0) > MAX_NMS_CANDIDATES:  # a conf_threshold near 0: bound NMS as the CPU path does
        top = top_candidates_per_image(image_idx, scores, counts, MAX_NMS_CANDIDATES)
        rows, scores, classes, image_idx = rows[top], scores[top], classes[top], image_idx[top]
        per_image = [min(count, MAX_NMS_CANDIDATES) for count in per_image]
    half = rows[:, 2:4] / 2
    boxes = torch.cat([rows[:, :2] - half, rows[:, :2] + half], 1)
    # boxes offset per (image, class) group so that groups never suppress each other; float64 so that the
    # offsets cost no precision
    groups = (image_idx * (width - 4) + classes).double() * GROUP_OFFSET
    ends = np.cumsum(per_image).tolist()
    kept = [torch.zeros(0, dtype=torch.int64, device=device)]
    for start, stop in nms_chunks(per_image, [p.iou_threshold for p in params]):
        first, last = ends[start] - per_image[start], ends[stop - 1]
        if last > first:
            chunk = slice(first, last)
            kept.append(first + nms(boxes[chunk].double() + groups[chunk, None], scores[chunk].double(),
                                    float(params[start].iou_threshold)))
    kept = torch.cat(kept)
    # one copy to the host for everything: box, score, class, image, candidate (integers < 2**24 are exact in float32)
    found = torch.cat([boxes[kept], scores[kept, None], classes[kept, None].float(), image_idx[kept, None].float(),
                       kept[:, None].float()], 1)
    found = found.cpu().numpy()
    boxes, scores, classes, image_idx = found[:, :4], found[:, 4], found[:, 5].astype(np.int32), found[:, 6].astype(np.int64)
    # image by image, best first; equal scores by class, then grid order — the CPU path's order, which decides what
    # max_det keeps when it cuts inside a tie
    order = np.lexsort((found[:, 7], classes, -scores, image_idx))
    bounds = np.searchsorted(image_idx[order], np.arange(n + 1))
    results: List[Detections] = []
    for i in range(n):
        mine = order[bounds[i] : bounds[i + 1]][: params[i].max_detections]
        meta = LetterboxMeta.from_array(metas[i])
        b = boxes[mine].copy()
        b[:, [0, 2]] = ((b[:, [0, 2]] - meta.pad_x) / meta.gain).clip(0, meta.width)
        b[:, [1, 3]] = ((b[:, [1, 3]] - meta.pad_y) / meta.gain).clip(0, meta.height)
        results.append(Detections(b, scores[mine].copy(), classes[mine]))
    return results


def warm_up_preprocess(target_hw: Tuple[int, int], device: torch.device, pad_value: int = 114,
                       limits: DecodeLimits = DecodeLimits(), dtype: torch.dtype = torch.float32) -> None:
    """Run ``preprocess_batch`` once on two synthetic 640×480 JPEGs, at load.

    A process's first nvJPEG decode and first letterbox load nvJPEG and CUDA's lazily loaded kernels: measured on
    an H200, 1.7 s for the first one-image batch — a stall the first request (and a benchmark's first window)
    would otherwise pay."""
    import cv2

    y, x = np.mgrid[0:480, 0:640]
    pattern = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", pattern)[1].tobytes()
    preprocess_batch([jpeg], target_hw, device, pad_value, limits, dtype)
    preprocess_batch([jpeg, jpeg], target_hw, device, pad_value, limits, dtype)
    torch.cuda.synchronize(device)


def warm_up_postprocess(rows: int, width: int, input_hw: Tuple[int, int], device: torch.device) -> None:
    """Run ``postprocess_batch`` once at load on random predictions of the detector's shape, with one IoU
    threshold for the batch and with two (NMS in one chunk, then in two): 1.4 s measured for the first call on an
    H200. (The per-image cap's sort, for conf_threshold near 0, is left to its first request.)"""
    generator = torch.Generator(device=device).manual_seed(0)
    predictions = torch.rand((2, rows, width), device=device, generator=generator)
    predictions[..., :4] *= max(input_hw)
    predictions[..., 4] *= 0.3  # some hundreds of candidates, not tens of thousands: NMS's mask stays small
    metas = np.stack([letterbox_meta((480, 640), input_hw).to_array()] * 2)
    postprocess_batch(predictions, metas, [DetectionParams()] * 2)
    postprocess_batch(predictions, metas, [DetectionParams(), DetectionParams().updated({"iou_threshold": 0.5})])
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()  # give back what the warm-up alone needed


def batch_buckets(max_batch: int) -> List[int]:
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


class GraphRunner:
    """CUDA graphs of ``model`` per batch bucket (1, 2, 4, … up to ``max_batch``, or the ``buckets`` given) over
    static input/output buffers."""

    def __init__(self, model, input_chw, max_batch: int, device, dtype, buckets: Optional[Sequence[int]] = None):
        self.model, self.device, self.dtype = model, device, dtype
        self.buckets = sorted(set(buckets)) if buckets else batch_buckets(max_batch)
        self.inputs: Dict[int, torch.Tensor] = {}
        self.outputs: Dict[int, torch.Tensor] = {}
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        # no_grad, not inference_mode: the static buffers are refilled later, also outside inference mode
        with torch.cuda.stream(stream), torch.no_grad():
            for size in self.buckets:
                static = torch.rand((size, *input_chw), device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
                for _ in range(3):  # warm-up: cuDNN picks its kernels before the capture
                    model(static)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    out = model(static)
                self.inputs[size], self.outputs[size], self.graphs[size] = static, out, graph
        torch.cuda.current_stream(device).wait_stream(stream)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        results, start = [], 0
        while start < len(batch):
            chunk = batch[start : start + self.buckets[-1]]
            size = next(b for b in self.buckets if b >= len(chunk))
            self.inputs[size][: len(chunk)].copy_(chunk)  # rows past len(chunk) keep old data; their output is dropped
            self.graphs[size].replay()
            results.append(self.outputs[size][: len(chunk)].to(torch.float32, copy=True))  # the next replay reuses the buffer
            start += len(chunk)
        return results[0] if len(results) == 1 else torch.cat(results)


def compile_detector(model: torch.nn.Module, mode: str, variants: int) -> torch.nn.Module:
    """``model`` through ``torch.compile`` (Inductor), or as is for mode "off". Static shapes: one compile per batch
    bucket (``variants`` of them), each then captured in its CUDA graph by :class:`GraphRunner`.

    Measured on an H200 (``tools/gpu_profile.py --compile default``): YOLOv7-640 FP16 in CUDA graphs went from 1,372
    to 2,146 img/s at batch 32 and from 2.19 to 1.22 ms at batch 1 — Inductor fuses the activations, additions and
    concatenations around cuDNN's convolutions into few kernels — for ~20 s of compiling per bucket at load."""
    if mode == "off":
        return model
    import os
    import shutil
    import sys

    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, variants + 1)
    if not os.path.basename(sys.executable or "").startswith("python"):
        # Inside Triton's Python backend the interpreter is embedded in the stub binary, which is what
        # sys.executable names; Inductor starts its compile workers with sys.executable: give it the interpreter
        # of the same environment (the stub imports from the first python3 on PATH), or compile in this process.
        python = shutil.which("python3")
        if python:
            sys.executable = python
        else:
            import torch._inductor.config

            torch._inductor.config.compile_threads = 1
    return torch.compile(model, mode=mode, dynamic=False)


def prepare_for_gpu(model: torch.nn.Module, device, dtype=torch.float16) -> torch.nn.Module:
    """A fused detector for GPU inference: FP16 weights, channels_last, cuDNN autotuning. In FP32, TF32 is off:
    FP32 means FP32 (TF32's 10-bit mantissa is FP16's precision)."""
    torch.backends.cudnn.benchmark = True
    if dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return model.to(device, dtype=dtype).to(memory_format=torch.channels_last).eval()
