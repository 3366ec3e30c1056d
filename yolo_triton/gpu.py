"""Pre- and postprocessing in PyTorch, on the GPU: the semantics of ``preprocess.py`` / ``postprocess.py``.

- decode: JPEG with nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``, all images of a batch in one call);
  PNG/BMP/WebP (and any host without CUDA) with the CPU decoder, then uploaded. Every input goes through the
  same header check and limits first (``preprocess.check_encoded``); EXIF orientation is applied as OpenCV does.
- letterbox: bilinear resize (half-pixel centres, no antialias, as ``cv2.INTER_LINEAR``), rounded to 8-bit
  levels as OpenCV's uint8 output is, padded with 114, RGB, 0..1 — straight into one batch tensor.
- postprocess: obj × cls, best class, thresholds, NMS per image and class in one ``torchvision.ops.nms`` call
  (boxes offset per image and class, in float64 so the offsets cost no precision), ``max_det``, scale back and
  clip; only the final boxes go to the host.

Not bit-identical to the CPU path: nvJPEG's IDCT and OpenCV's fixed-point resize differ from libjpeg's and
from float bilinear by a level here and there, so boxes agree to a tolerance (tests/test_gpu.py).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .postprocess import DetectionParams, Detections
from .preprocess import DecodeLimits, Header, ImageDecodeError, LetterboxMeta, check_encoded, decode_image, letterbox_meta

# a coordinate offset larger than any box, per (image, class) group, so that one NMS call keeps groups apart
GROUP_OFFSET = 1 << 16


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


def postprocess_batch(predictions: torch.Tensor, metas: np.ndarray, params: Sequence[DetectionParams]) -> List[Detections]:
    """Raw-grid predictions [N, K, 5+nc] (any device) + letterbox metas → detections per image (numpy, host).

    ``params`` per image (requests may set their own thresholds)."""
    from torchvision.ops import nms

    n, _, width = predictions.shape
    device = predictions.device
    conf = torch.tensor([p.conf_threshold for p in params], device=device, dtype=predictions.dtype)
    image_idx, row_idx = (predictions[..., 4] > conf[:, None]).nonzero(as_tuple=True)
    rows = predictions[image_idx, row_idx].float()
    class_scores = rows[:, 5:] * rows[:, 4:5]
    scores, classes = class_scores.max(1)
    keep = scores > conf[image_idx].float()
    rows, scores, classes, image_idx = rows[keep], scores[keep], classes[keep], image_idx[keep]
    half = rows[:, 2:4] / 2
    boxes = torch.cat([rows[:, :2] - half, rows[:, :2] + half], 1)
    # one NMS call per distinct IoU threshold (requests may set their own; usually there is one), boxes offset per
    # (image, class) group so that groups never suppress each other
    groups = (image_idx * (width - 4) + classes).double() * GROUP_OFFSET
    per_image_iou = np.array([p.iou_threshold for p in params])
    thresholds, kept = np.unique(per_image_iou), []
    for threshold in thresholds:
        if len(thresholds) == 1:
            idx = torch.arange(len(scores), device=device)
        else:
            images = torch.from_numpy(np.flatnonzero(per_image_iou == threshold)).to(device)
            idx = torch.isin(image_idx, images).nonzero()[:, 0]
        kept.append(idx[nms(boxes[idx].double() + groups[idx, None], scores[idx].double(), float(threshold))])
    kept = torch.cat(kept)
    boxes, scores, classes, image_idx = (t[kept].cpu().numpy() for t in (boxes, scores, classes, image_idx))
    results: List[Detections] = []
    for i in range(n):
        mine = np.flatnonzero(image_idx == i)
        mine = mine[np.argsort(-scores[mine], kind="stable")][: params[i].max_detections]
        meta = LetterboxMeta.from_array(metas[i])
        b = boxes[mine].astype(np.float32)
        b[:, [0, 2]] = ((b[:, [0, 2]] - meta.pad_x) / meta.gain).clip(0, meta.width)
        b[:, [1, 3]] = ((b[:, [1, 3]] - meta.pad_y) / meta.gain).clip(0, meta.height)
        results.append(Detections(b, scores[mine].astype(np.float32), classes[mine].astype(np.int32)))
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
    threshold and with two (the two NMS paths): 1.4 s measured for the first call on an H200."""
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
    """CUDA graphs of ``model`` per batch bucket over static input/output buffers."""

    def __init__(self, model, input_chw, max_batch: int, device, dtype):
        self.model, self.device, self.dtype = model, device, dtype
        self.buckets = batch_buckets(max_batch)
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


def prepare_for_gpu(model: torch.nn.Module, device, dtype=torch.float16) -> torch.nn.Module:
    """A fused detector for GPU inference: FP16 weights, channels_last, cuDNN autotuning. In FP32, TF32 is off:
    FP32 means FP32 (TF32's 10-bit mantissa is FP16's precision)."""
    torch.backends.cudnn.benchmark = True
    if dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return model.to(device, dtype=dtype).to(memory_format=torch.channels_last).eval()
