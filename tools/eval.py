"""`make eval`: COCO mAP of the served pipeline — encoded bytes in, boxes out — scored by pycocotools.

    python -m tools.eval --annotations instances_val2017.json --images val2017/ [-m yolov7_e2e] [-u localhost:8001]
                         [--conf 0.001] [--iou 0.65] [--max-det 300] [--no-multi-label] [--concurrency 8]
                         [--out build/eval]
    python -m tools.eval --images photos/ --reference yolov7_e2e_cpu [-m yolov7_e2e]      # agreement mode

Every image of the annotation file is sent as its file's bytes to the running ensemble (the thresholds as request
parameters; the defaults are the official yolov7 ``test.py``'s: conf 0.001, IoU 0.65, multi-label NMS), the answers are written in COCO's results format
(``detections.json``) and scored with ``COCOeval`` — the twelve numbers of ``summarize()``, named, in
``metrics.json``. Category ids come from the annotation file's categories matched by name to the model's class
names (the postprocess config's ``labels``); a category the model lacks, a class no category has, an image missing
from ``--images``, an image that fails to decode and a server error are counted and listed, never dropped silently.

Agreement mode (``--reference``): the same images through another served pipeline — another ensemble (``NAME``),
the same one on another server (``HOST:PORT``) or both (``HOST:PORT/NAME``) — whose detections are the ground
truth: the standard check of an engine conversion (FP16 against FP32, a TensorRT INT8 plan against its FP16 one).
Beside the AP it reports the share of reference boxes matched one to one by a box of the same class at IoU ≥ 0.5
and ≥ 0.9, and the largest score difference of a pair matched at IoU ≥ 0.5.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from yolo_triton import specs
from yolo_triton.client import Detector
from yolo_triton.client.cli import IMAGE_SUFFIXES

# the official yolov7 test.py's defaults
CONF, IOU, MAX_DET = 0.001, 0.65, 300
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def category_map(categories: Sequence[dict], names: Sequence[str]) -> Tuple[Dict[int, int], List[str], List[str]]:
    """(model class id → category id, categories the model lacks, model classes no category has), by name."""
    by_name = {c["name"]: c["id"] for c in categories}
    mapping = {index: by_name[name] for index, name in enumerate(names) if name in by_name}
    lacking = sorted(set(by_name) - set(names))
    unmatched = [name for name in names if name not in by_name]
    return mapping, lacking, unmatched


def detect_all(detector: Detector, paths: Dict[int, Path], options: dict, concurrency: int, what: str
               ) -> Tuple[Dict[int, list], Dict[int, str]]:
    """image id → detections (``options``: ``Detector.parameters``' keywords), and image id → the error of each
    image that got none."""
    ids = list(paths)
    found: Dict[int, list] = {}
    errors: Dict[int, str] = {}
    results = detector.stream([paths[i] for i in ids], concurrency=concurrency, **options)
    for result in tqdm(results, total=len(ids), desc=what, unit="img", file=sys.stderr):
        image_id = ids[result.index]
        if result.ok:
            found[image_id] = result.detections
        else:
            errors[image_id] = str(result.error)
    return found, errors


def to_results(found: Dict[int, list], mapping: Dict[int, int]) -> Tuple[List[dict], Dict[str, int]]:
    """COCO results (x, y, w, h); detections of classes without a category are counted by name, not kept."""
    results, dropped = [], {}
    for image_id, detections in found.items():
        for d in detections:
            if d.class_id not in mapping:
                dropped[d.name] = dropped.get(d.name, 0) + 1
                continue
            results.append({"image_id": image_id, "category_id": mapping[d.class_id], "score": round(d.score, 5),
                            "bbox": [round(d.x1, 3), round(d.y1, 3), round(d.x2 - d.x1, 3), round(d.y2 - d.y1, 3)]})
    return results, dropped


def coco_metrics(ground_truth, results: List[dict], image_ids: Sequence[int]) -> Tuple[Dict[str, float], str]:
    """The twelve numbers of COCOeval.summarize() over ``image_ids``, named, and the printed summary."""
    from pycocotools.cocoeval import COCOeval

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        detections = ground_truth.loadRes(results) if results else None
        if detections is None:  # pycocotools cannot load an empty result list: nothing found is AP 0
            return {name: 0.0 for name in STAT_NAMES}, "no detections: every AP and AR is 0\n"
        evaluation = COCOeval(ground_truth, detections, "bbox")
        evaluation.params.imgIds = list(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluation.stats)}, printed.getvalue()


def coco_from(images: Dict[int, Tuple[str, int, int]], categories: List[dict], annotations: List[dict]):
    """An in-memory COCO ground truth (pycocotools' COCO) from plain lists."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": i, "file_name": f, "width": w, "height": h} for i, (f, w, h) in images.items()],
                        "categories": categories, "annotations": annotations}
        coco.createIndex()
    return coco


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4] (x1, y1, x2, y2). Two boxes equal to 0.01 px
    have IoU 1 even without area (a box beyond the image's edge, clipped to a line, is the same detection in both
    runs, though it overlaps nothing)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    ious = inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)
    return np.where(np.all(np.abs(a[:, None] - b[None, :]) <= 0.01, axis=2), 1.0, ious)


def agreement(reference: Dict[int, list], served: Dict[int, list]) -> dict:
    """Reference boxes matched one to one (best score first) by a served box of the same class: the share at
    IoU ≥ 0.5 and ≥ 0.9, and the largest score difference of a pair matched at IoU ≥ 0.5."""
    total, at_50, at_90, score_diff = 0, 0, 0, 0.0
    for image_id, ref in reference.items():
        ours = served.get(image_id, [])
        total += len(ref)
        if not ref or not ours:
            continue
        ious = iou_matrix(np.array([d.box for d in ref]), np.array([d.box for d in ours]))
        same = np.array([[r.class_id == o.class_id for o in ours] for r in ref])
        ious = np.where(same, ious, 0.0)
        free = np.ones(len(ours), bool)
        for r in np.argsort([-d.score for d in ref], kind="stable"):
            candidates = np.where(free, ious[r], -1.0)
            best = int(np.argmax(candidates))
            if candidates[best] >= 0.5:
                free[best] = False
                at_50 += 1
                at_90 += int(candidates[best] >= 0.9)
                score_diff = max(score_diff, abs(ref[r].score - ours[best].score))
    return {"reference_boxes": total, "matched_iou50": at_50 / total if total else 1.0,
            "matched_iou90": at_90 / total if total else 1.0, "max_score_diff_iou50": score_diff}


def reference_target(reference: str, url: str, model: str) -> Tuple[str, str]:
    """``NAME`` → (url, NAME); ``HOST:PORT`` → (HOST:PORT, model); ``HOST:PORT/NAME`` → both."""
    if "/" in reference:
        other_url, other_model = reference.split("/", 1)
        return other_url, other_model
    return (reference, model) if ":" in reference else (url, reference)


def image_files(folder: Path) -> Dict[int, Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return {index + 1: path for index, path in enumerate(files)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", type=Path, help="COCO instances JSON (ground truth)")
    parser.add_argument("--images", type=Path, required=True, help="the images' folder (file_name is relative to it)")
    parser.add_argument("-m", "--model", default=specs.YOLOV7.ensemble_name)
    parser.add_argument("-u", "--url", default="localhost:8001", help="gRPC host:port")
    parser.add_argument("--conf", type=float, default=CONF)
    parser.add_argument("--iou", type=float, default=IOU)
    parser.add_argument("--max-det", type=int, default=MAX_DET)
    parser.add_argument("--multi-label", action=argparse.BooleanOptionalAction, default=True,
                        help="a box may carry every class above --conf, as the official test.py scores COCO (default)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reference", help="agreement mode: NAME, HOST:PORT or HOST:PORT/NAME of the reference")
    parser.add_argument("--out", type=Path, default=Path("build/eval"))
    args = parser.parse_args(argv)
    if not args.annotations and not args.reference:
        parser.error("give --annotations (COCO ground truth) or --reference (agreement mode), or both")
    args.out.mkdir(parents=True, exist_ok=True)
    with Detector(args.url, args.model) as detector:
        names = detector.class_names()
        report: dict = {"model": args.model, "url": args.url, "conf": args.conf, "iou": args.iou,
                        "max_det": args.max_det, "multi_label": args.multi_label, "class_names": len(names)}
        if args.annotations:
            from pycocotools.coco import COCO

            with contextlib.redirect_stdout(io.StringIO()):
                ground_truth = COCO(str(args.annotations))
            images = {i: (img["file_name"], img["width"], img["height"]) for i, img in ground_truth.imgs.items()}
            categories = ground_truth.loadCats(ground_truth.getCatIds())
            paths = {i: args.images / f for i, (f, _, _) in images.items()}
        else:
            paths = image_files(args.images)
            images = {i: (str(p.relative_to(args.images)), 0, 0) for i, p in paths.items()}
            categories = [{"id": index, "name": name} for index, name in enumerate(names)]
        missing = sorted(str(paths[i]) for i in paths if not paths[i].is_file())
        present = {i: p for i, p in paths.items() if p.is_file()}
        mapping, lacking, unmatched = category_map(categories, names)
        options = {"conf": args.conf, "iou": args.iou, "max_det": args.max_det, "multi_label": args.multi_label}
        found, errors = detect_all(detector, present, options, args.concurrency, args.model)
    results, dropped = to_results(found, mapping)
    (args.out / "detections.json").write_text(json.dumps(results))
    report.update({"images": len(paths), "answered": len(found), "missing": missing,
                   "failed": {str(present[i]): e for i, e in sorted(errors.items())},
                   "categories_the_model_lacks": lacking, "classes_without_category": unmatched,
                   "detections": len(results), "detections_dropped_by_class": dropped})
    summaries = []
    if args.annotations:
        metrics, printed = coco_metrics(ground_truth, results, sorted(found))
        report["metrics"] = metrics
        summaries.append(f"{args.model} against {args.annotations.name}:\n{printed}")
    if args.reference:
        ref_url, ref_model = reference_target(args.reference, args.url, args.model)
        with Detector(ref_url, ref_model) as other:
            reference, ref_errors = detect_all(other, present, options, args.concurrency, f"{ref_model} (reference)")
        truth = [{"id": n, "image_id": image_id, "category_id": mapping.get(d.class_id, -1), "iscrowd": 0,
                  "bbox": [d.x1, d.y1, d.x2 - d.x1, d.y2 - d.y1], "area": (d.x2 - d.x1) * (d.y2 - d.y1)}
                 for n, (image_id, d) in enumerate(((i, d) for i, ds in reference.items() for d in ds), start=1)
                 if d.class_id in mapping]
        agreement_metrics, printed = coco_metrics(coco_from(images, categories, truth), results, sorted(reference))
        report["reference"] = {"model": ref_model, "url": ref_url, "metrics": agreement_metrics,
                               "failed": {str(present[i]): e for i, e in sorted(ref_errors.items())},
                               **agreement(reference, found)}
        summaries.append(f"{args.model} against {ref_model} at {ref_url} as ground truth:\n{printed}")
    (args.out / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    print("".join(summaries), end="")
    for label, items in (("missing from --images", missing), ("failed", report["failed"]),
                         ("categories the model lacks", lacking), ("model classes with no category", unmatched)):
        if items:
            print(f"{label} ({len(items)}): {', '.join(list(items)[:10])}{' …' if len(items) > 10 else ''}")
    if args.reference:
        r = report["reference"]
        print(f"reference boxes matched (same class): {r['matched_iou50']:.4f} at IoU >= 0.5, {r['matched_iou90']:.4f} "
              f"at IoU >= 0.9 of {r['reference_boxes']}; largest score difference {r['max_score_diff_iou50']:.5f}")
    print(f"wrote {args.out / 'detections.json'} and {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
