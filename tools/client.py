#!/usr/bin/env python3
"""Client for the YOLO ensembles: sends encoded image bytes, prints (or draws) the detections.

    python tools/client.py image photo.jpg [more.png photos/ ...] [-m yolov7_e2e] [-u localhost:8001] [--protocol grpc]
    python tools/client.py image photo.jpg --json --conf 0.4 --iou 0.5
    python tools/client.py video clip.mp4 -o annotated.mp4
    python tools/client.py dummy -i

A thin wrapper around ``yolo_triton.client.main`` (installed as ``yolo-triton-client``); ``--help`` lists every flag,
docs/client.md describes them.
"""
from __future__ import annotations

from yolo_triton.client import main

if __name__ == "__main__":
    raise SystemExit(main(prog="client.py"))
