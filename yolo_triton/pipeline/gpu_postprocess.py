"""Detector output → finished detections, from the raw grid on the GPU: the semantics of ``pipeline/postprocess.py``,
batched.

First, on the GPU, which grid rows of every image of the scheduler's batch pass the image's objectness threshold
(``conf_threshold``; one comparison over the batch), and how many per image. Each image is finished one of two ways,
by its own count:

- few rows (at most ``HOST_ROWS_PER_IMAGE``: any usual threshold): only those rows go to the host, in one copy for
  all such images, and the CPU path's own ``postprocess`` finishes each image — its boxes by construction. Alone on
  an H100 this took 0.78 ms at batch 1 against 1.92 ms the other way, and a fifth of its GPU-kernel time at batch
  16, where it cost the host more (docs/benchmarks.md);
- many rows (a ``conf_threshold`` near 0, as for mAP): the GPU finishes them. Raw-grid candidates
  (``layouts.raw_grid_candidates``, the CPU path's function), at most ``MAX_NMS_CANDIDATES`` per image (as the CPU
  path), NMS per image and class in one ``torchvision.ops.nms`` call per chunk of images (boxes offset per image and
  class, in float64 so the offsets cost no precision; a chunk bounds NMS's memory), ``max_det``; only the final
  boxes go to the host, in one copy, and are mapped back there with ``boxes.scale_boxes`` (the CPU path's function).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..boxes import Detections, Letterbox, LetterboxMeta, scale_boxes
from ..layouts import raw_grid_candidates
from ..specs import MAX_NMS_CANDIDATES, DetectionParams
from .postprocess import postprocess

# objectness-passing rows of an image up to which the host finishes it: a usual threshold leaves tens to hundreds
# (50-89 of YOLOv7-640's 25,200 per photo at 0.25, measured), a threshold near 0 nearly all of them, which the CPU
# path's NMS would take a long time over
HOST_ROWS_PER_IMAGE = 1024

# a coordinate offset larger than any box, per (image, class) group, so that one NMS call keeps groups apart
GROUP_OFFSET = 1 << 16
# candidates per NMS call: torchvision's CUDA NMS builds an N × N/64-word bit mask for its N boxes (N²/8 bytes: 32,768
# boxes → 128 MiB), so one call over a whole batch at a low conf_threshold (every grid row a candidate: 64 images of
# YOLOv7-640 → 1.6 M boxes) would ask for ~300 GiB. Images are independent: they go in consecutive chunks instead.
NMS_CHUNK_CANDIDATES = 1 << 15


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

    ``params`` per image (requests may set their own thresholds, classes, agnostic_nms and multi_label)."""
    n = len(predictions)
    conf = torch.tensor([p.conf_threshold for p in params], device=predictions.device, dtype=predictions.dtype)
    passing = predictions[..., 4] > conf[:, None]
    counts = passing.sum(1).tolist()
    # each image's way by its own count: one request's threshold near 0 does not send its batch to the host
    on_host = [i for i, count in enumerate(counts) if count <= HOST_ROWS_PER_IMAGE]
    on_gpu = [i for i, count in enumerate(counts) if count > HOST_ROWS_PER_IMAGE]
    results: List[Optional[Detections]] = [None] * n
    for images, finish, tensors in ((on_host, _finish_on_host, (predictions, passing)),
                                    (on_gpu, _finish_on_gpu, (predictions, conf))):
        if images:
            found = finish(*_images(images, n, *tensors), metas[images], [params[i] for i in images])
            for i, detections in zip(images, found):
                results[i] = detections
    return results


def _images(images: List[int], n: int, *tensors: torch.Tensor) -> List[torch.Tensor]:
    """``tensors`` (batch first) for those of the batch's ``n`` images, or as they are where that is all of them."""
    if len(images) == n:
        return list(tensors)
    index = torch.tensor(images, device=tensors[0].device)
    return [tensor[index] for tensor in tensors]


def _finish_on_host(predictions: torch.Tensor, passing: torch.Tensor, metas: np.ndarray,
                    params: Sequence[DetectionParams]) -> List[Detections]:
    """``postprocess_batch`` for few rows: the passing rows alone to the host, in grid order, in one copy, and each
    image finished by the CPU path itself (the rows it drops first are the ones left behind here)."""
    image_idx, row_idx = torch.nonzero(passing, as_tuple=True)
    rows = torch.cat([predictions[image_idx, row_idx], image_idx[:, None].to(predictions.dtype)], 1).cpu().numpy()
    bounds = np.searchsorted(rows[:, -1], np.arange(len(params) + 1) - 0.5)  # image indices < 2**24: exact in float32
    return [postprocess(rows[bounds[i] : bounds[i + 1], :-1], LetterboxMeta.from_array(metas[i]), params[i])
            for i in range(len(params))]


def _finish_on_gpu(predictions: torch.Tensor, conf: torch.Tensor, metas: np.ndarray,
                   params: Sequence[DetectionParams]) -> List[Detections]:
    """``postprocess_batch`` for many candidates: thresholds, NMS and ``max_det`` on the GPU, batched."""
    from torchvision.ops import nms

    n, _, width = predictions.shape
    num_classes = width - 5
    device = predictions.device
    multi_label = None
    if any(p.multi_label for p in params):
        multi_label = torch.tensor([p.multi_label for p in params], device=device)
    # candidates come out image-major (nonzero walks the batch in order): each image's are one contiguous run
    image_idx, boxes, scores, classes = raw_grid_candidates(predictions, conf, multi_label)
    if any(p.classes for p in params):  # the request's classes only, before the per-image cap (as the CPU path)
        allowed = torch.ones((n, num_classes), dtype=torch.bool)
        for i, p in enumerate(params):
            if p.classes:
                allowed[i] = False
                allowed[i, list(p.classes)] = True
        keep = allowed.to(device)[image_idx, classes]
        image_idx, boxes, scores, classes = image_idx[keep], boxes[keep], scores[keep], classes[keep]
    counts = torch.bincount(image_idx, minlength=n)
    per_image = counts.tolist()
    if max(per_image, default=0) > MAX_NMS_CANDIDATES:  # a conf_threshold near 0: bound NMS as the CPU path does
        top = top_candidates_per_image(image_idx, scores, counts, MAX_NMS_CANDIDATES)
        boxes, scores, classes, image_idx = boxes[top], scores[top], classes[top], image_idx[top]
        per_image = [min(count, MAX_NMS_CANDIDATES) for count in per_image]
    # boxes offset per (image, class) group — per image alone with agnostic_nms — so that groups never suppress
    # each other; float64 so that the offsets cost no precision
    group_class = classes
    if any(p.agnostic_nms for p in params):
        agnostic = torch.tensor([p.agnostic_nms for p in params], device=device)
        group_class = torch.where(agnostic[image_idx], torch.zeros_like(classes), classes)
    groups = (image_idx * num_classes + group_class).double() * GROUP_OFFSET
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
        results.append(Detections(scale_boxes(boxes[mine], LetterboxMeta.from_array(metas[i])), scores[mine].copy(),
                                  classes[mine]))
    return results


def warm_up_postprocess(rows: int, width: int, input_hw: Tuple[int, int], device: torch.device) -> None:
    """Run both ways of ``postprocess_batch`` once at load on random predictions of the detector's shape: the
    GPU's (for a threshold near 0) with one IoU threshold for the batch and with two (NMS in one chunk, then in two),
    and the host's: the first call of a process loads kernels and libraries for more than a second (docs/gpu.md).
    (The per-image cap's sort, for conf_threshold near 0, is left to its first request.)"""
    generator = torch.Generator(device=device).manual_seed(0)
    predictions = torch.rand((2, rows, width), device=device, generator=generator)
    predictions[..., :4] *= max(input_hw)
    predictions[..., 4] *= 0.3  # ~4,200 rows per image pass 0.25, a few hundred candidates: NMS's mask stays small
    metas = np.stack([Letterbox((480, 640), input_hw).meta.to_array()] * 2)
    for params in ([DetectionParams()] * 2, [DetectionParams(), DetectionParams().updated({"iou_threshold": 0.5})]):
        conf = torch.tensor([p.conf_threshold for p in params], device=device, dtype=predictions.dtype)
        _finish_on_gpu(predictions, conf, metas, params)
    predictions[:, 64:, 4] = 0  # a few dozen rows pass objectness: the host's way
    postprocess_batch(predictions, metas, [DetectionParams()] * 2)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()  # give back what the warm-up alone needed
