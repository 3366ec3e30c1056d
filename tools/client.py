#!/usr/bin/env python3
"""Thin client: sends encoded image bytes to the ensemble and prints the detections.

    python tools/client.py image photo.jpg [more.png ...] [-m yolov7_e2e] [-u localhost:8001] [--protocol grpc]
    python tools/client.py image photo.jpg --json --conf 0.4 --iou 0.5

The client never decodes or resizes: the server does all of it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from yolo_triton import specs  # noqa: E402


def detect(client, module, model: str, data: bytes, parameters=None) -> list:
    tensor = module.InferInput(specs.ENSEMBLE_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=object))
    result = client.infer(model, [tensor], outputs=[module.InferRequestedOutput(n) for n in specs.ENSEMBLE_OUTPUTS], parameters=parameters)
    n = int(result.as_numpy("num_detections")[0, 0])
    boxes, scores = result.as_numpy("boxes")[0, :n], result.as_numpy("scores")[0, :n]
    classes, names = result.as_numpy("classes")[0, :n], result.as_numpy("class_names")[0, :n]
    return [
        {"class_id": int(c), "name": name.decode(), "score": round(float(s), 4), "box": [round(float(v), 1) for v in box]}
        for box, s, c, name in zip(boxes, scores, classes, names)
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["image"])
    parser.add_argument("inputs", nargs="+", type=Path)
    parser.add_argument("-m", "--model", default=specs.YOLOV7.ensemble_name)
    parser.add_argument("-u", "--url", default=None, help="default localhost:8001 (grpc) / localhost:8000 (http)")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--conf", type=float, help="confidence threshold for this request")
    parser.add_argument("--iou", type=float, help="NMS IoU threshold for this request")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    args = parser.parse_args(argv)
    if args.protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    url = args.url or ("localhost:8001" if args.protocol == "grpc" else "localhost:8000")
    client = module.InferenceServerClient(url)
    parameters = {k: v for k, v in {"conf_threshold": args.conf, "iou_threshold": args.iou}.items() if v is not None}
    status = 0
    for path in args.inputs:
        try:
            detections = detect(client, module, args.model, path.read_bytes(), parameters or None)
        except (OSError, module.InferenceServerException) as error:
            print(f"{path}: error: {error}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps({"file": str(path), "detections": detections}))
            continue
        print(f"{path}: {len(detections)} detections")
        for d in detections:
            x1, y1, x2, y2 = d["box"]
            print(f"  {d['class_id']:>3} {d['name']:<15} {d['score']:.3f}  x1={x1:.1f} y1={y1:.1f} x2={x2:.1f} y2={y2:.1f}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
