"""`make eval` (tools/eval.py) against the session server, on ground truths made by hand from the server's own
boxes so that every number is known in advance, worked out here without pycocotools:

- perfect: the ground truth is exactly what the model finds → AP = AP50 = AP75 = 1;
- every ground-truth box shifted to IoU 0.62 with its detection → AP50 = 1, AP75 = 0, AP = 3/10 (thresholds
  0.50, 0.55, 0.60 of the ten match);
- one ground-truth box nobody finds → AP = share of COCO's 101 recall thresholds at or below n / (n + 1);
- the best-scored detection not in the ground truth (a false positive ranked first) → AP = (n - 1) / n;
- a category the model lacks ("unicorn"), model classes with no category, an image missing from the folder and one
  that does not decode: reported, counted, never silently dropped.
Agreement mode: the ensemble against itself (everything matched, AP 1) and against RUNTIME=torch on the same
weights (two runtimes in FP32: every reference box matched at IoU ≥ 0.9, scores within 1e-4).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from yolo_triton.client import Detector

from ..helpers import PHOTOS, ROOT, SMALL, TORCH_SPECS

CONF = 0.03  # the small random-weight model scores low: at 0.03 one class has a score of boxes lying apart


def apart(boxes) -> bool:
    """No two of ``boxes`` overlap at IoU 0.2 or more: a shifted or dropped ground-truth box can only ever match
    the detection it was made from."""
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            w, h = np.clip(np.minimum(boxes[i, 2:], boxes[j, 2:]) - np.maximum(boxes[i, :2], boxes[j, :2]), 0, None)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if w * h / (area(boxes[i]) + area(boxes[j]) - w * h) >= 0.2:
                return False
    return True


@pytest.fixture(scope="module")
def found(server, photo_dir):
    """The photos, the server's boxes of each at CONF (and the tool's other defaults: iou 0.65, max_det 300,
    multi-label), and the
    ground truth's class: the most frequent one whose boxes lie apart within each photo."""
    paths = sorted(photo_dir.glob("*.*"))
    with Detector(server.grpc_url, SMALL.ensemble_name) as detector:
        detections = [detector.detect(path, conf=CONF, iou=0.65, max_det=300, multi_label=True) for path in paths]
    classes = [d.class_id for ds in detections for d in ds]
    usable = [c for c in sorted(set(classes), key=classes.count, reverse=True)
              if classes.count(c) >= 3 and all(apart([d.box for d in ds if d.class_id == c]) for ds in detections)]
    assert usable, "no class with 3 boxes apart to make the ground truths of: change CONF"
    return paths, detections, usable[0]


def ground_truth(path, paths, detections, target, transform=lambda box: box, extra=(), drop=None,
                 more_images=(), more_categories=()):
    """A COCO instances file: the photos, one category (the target class's name, id 7), an annotation for every
    box of that class (each through ``transform``), ``extra`` boxes, the box ``drop`` (image, index) left out."""
    images = [{"id": i + 1, "file_name": p.name, "width": 0, "height": 0} for i, p in enumerate(paths)]
    annotations = []
    for i, ds in enumerate(detections):
        for j, d in enumerate(ds):
            if d.class_id == target and (i, j) != drop:
                annotations.append((i + 1, transform(list(d.box))))
    annotations += list(extra)
    names = SMALL.labels
    path.write_text(json.dumps({
        "images": images + list(more_images),
        "categories": [{"id": 7, "name": names[target]}, *more_categories],
        "annotations": [{"id": n + 1, "image_id": image_id, "category_id": 7, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
                        for n, (image_id, (x1, y1, x2, y2)) in enumerate(annotations)],
    }))
    return sum(1 for ds in detections for d in ds if d.class_id == target)


def run_eval(server, photo_dir, tmp_path, *args):
    out = tmp_path / "eval"
    done = subprocess.run([sys.executable, "-m", "tools.eval", "-u", server.grpc_url, "-m", SMALL.ensemble_name,
                           "--images", str(photo_dir), "--conf", str(CONF), "--out", str(out), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "detections.json").read_text()), done.stdout


RECALL_THRESHOLDS = np.linspace(0, 1, 101)  # COCO's


def test_perfect_match(server, photo_dir, found, tmp_path):
    n = ground_truth(tmp_path / "gt.json", *found)
    report, results, printed = run_eval(server, photo_dir, tmp_path, "--annotations", tmp_path / "gt.json")
    assert report["metrics"]["AP"] == pytest.approx(1.0) and report["metrics"]["AP50"] == pytest.approx(1.0)
    assert report["metrics"]["AP75"] == pytest.approx(1.0) and report["metrics"]["AR100"] == pytest.approx(1.0)
    assert sum(r["category_id"] == 7 for r in results) == n  # the COCO results file: one row per box of the class
    assert report["images"] == report["answered"] == len(PHOTOS) and "Average Precision" in printed
    assert set(report["metrics"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"}


def test_boxes_shifted_to_iou_062(server, photo_dir, found, tmp_path):
    def shift(box):  # same width, moved right: IoU = (w - dx) / (w + dx) = 0.62
        x1, y1, x2, y2 = box
        dx = (x2 - x1) * (1 - 0.62) / (1 + 0.62)
        return [x1 + dx, y1, x2 + dx, y2]

    ground_truth(tmp_path / "gt.json", *found, transform=shift)
    metrics = run_eval(server, photo_dir, tmp_path, "--annotations", tmp_path / "gt.json")[0]["metrics"]
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.3)


def test_a_missed_box(server, photo_dir, found, tmp_path):
    paths, detections, target = found
    far = (1, [1.0, 1.0, 3.0, 3.0])  # a 2×2 box in a corner of the first photo, far from every detection
    assert all(d.class_id != target or d.x1 > 3 or d.y1 > 3 for d in detections[0])
    n = ground_truth(tmp_path / "gt.json", *found, extra=[far])
    metrics = run_eval(server, photo_dir, tmp_path, "--annotations", tmp_path / "gt.json")[0]["metrics"]
    assert metrics["AP50"] == pytest.approx(np.mean(RECALL_THRESHOLDS <= n / (n + 1)))


def test_a_false_positive_ranked_first(server, photo_dir, found, tmp_path):
    paths, detections, target = found
    best = max(((i, j) for i, ds in enumerate(detections) for j, d in enumerate(ds) if d.class_id == target),
               key=lambda ij: detections[ij[0]][ij[1]].score)
    n = ground_truth(tmp_path / "gt.json", *found, drop=best)
    metrics = run_eval(server, photo_dir, tmp_path, "--annotations", tmp_path / "gt.json")[0]["metrics"]
    assert metrics["AP"] == pytest.approx((n - 1) / n) and metrics["AP50"] == pytest.approx((n - 1) / n)


def test_names_images_and_failures_are_reported(server, photo_dir, found, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in found[0]:
        (images / path.name).write_bytes(path.read_bytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    more = [{"id": 100, "file_name": "broken.jpg", "width": 0, "height": 0},
            {"id": 101, "file_name": "gone.jpg", "width": 0, "height": 0}]
    ground_truth(tmp_path / "gt.json", *found, more_images=more, more_categories=[{"id": 99, "name": "unicorn"}])
    report, _, printed = run_eval(server, images, tmp_path, "--annotations", tmp_path / "gt.json")
    assert report["categories_the_model_lacks"] == ["unicorn"] and "unicorn" in printed
    assert len(report["classes_without_category"]) == len(SMALL.labels) - 1
    assert report["missing"] == [str(images / "gone.jpg")] and list(report["failed"]) == [str(images / "broken.jpg")]
    assert "cannot decode" in report["failed"][str(images / "broken.jpg")]
    assert report["images"] == len(PHOTOS) + 2 and report["answered"] == len(PHOTOS)


def test_agreement_mode(server, photo_dir, tmp_path):
    """Against itself, one request at a time (dynamic batching alone may move a float by an ulp and a box near the
    threshold with it): every box matched, AP 1. Against RUNTIME=torch on the same weights: two FP32 runtimes
    agree almost everywhere (near-threshold boxes may differ at this low CONF)."""
    report = run_eval(server, photo_dir, tmp_path, "--reference", SMALL.ensemble_name, "--concurrency", 1)[0]
    same = report["reference"]
    assert same["reference_boxes"] > 0 and same["failed"] == {}
    assert same["matched_iou50"] == 1.0 and same["matched_iou90"] == 1.0 and same["max_score_diff_iou50"] == 0.0
    # COCO's AP of a run against itself is under 1 here: COCOeval keeps 100 boxes an image, and boxes clipped to a
    # line at the image's edge have no area to overlap; it is reported beside the matching all the same
    assert 0.5 < same["metrics"]["AP"] <= 1.0 and same["metrics"]["AR100"] <= 1.0
    torch = run_eval(server, photo_dir, tmp_path, "--reference", f"{TORCH_SPECS[0].name}_e2e",
                     "--concurrency", 1)[0]["reference"]
    print("MEASURED torch FP32 vs onnxruntime FP32 at conf", CONF, json.dumps(torch))
    assert torch["matched_iou90"] >= 0.99 and torch["max_score_diff_iou50"] <= 1e-4


def test_agreement_counts_what_it_says():
    """The matching itself, on boxes whose IoUs are known: one reference box matched at IoU 1, one at 0.6 (above
    0.5, under 0.9), one of another class (unmatched), one with nothing near."""
    from tools.eval import agreement
    from yolo_triton.client import Detection

    reference = [Detection(1, "a", 0.9, 0, 0, 10, 10), Detection(1, "a", 0.8, 100, 0, 110, 10),
                 Detection(2, "b", 0.7, 200, 0, 210, 10), Detection(1, "a", 0.6, 300, 0, 310, 10)]
    shift = 10 * (1 - 0.6) / (1 + 0.6)  # IoU (10 - dx) / (10 + dx) = 0.6
    served = [Detection(1, "a", 0.85, 0, 0, 10, 10), Detection(1, "a", 0.8, 100 + shift, 0, 110 + shift, 10),
              Detection(3, "c", 0.7, 200, 0, 210, 10)]
    found = agreement({1: reference}, {1: served})
    assert found["reference_boxes"] == 4
    assert found["matched_iou50"] == pytest.approx(2 / 4) and found["matched_iou90"] == pytest.approx(1 / 4)
    assert found["max_score_diff_iou50"] == pytest.approx(0.05)
