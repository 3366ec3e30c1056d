"""Client for the YOLO ensembles: encoded image bytes in, finished boxes out — a Python API and a command line.

Python::

    from yolo_triton.client import Detector

    with Detector("localhost:8001", model="yolov7_e2e") as detector:           # gRPC; protocol="http" for :8000
        for d in detector.detect("photo.jpg", conf=0.4):                       # path or encoded bytes
            print(d.name, d.score, d.box)
        per_image = detector.detect_batch([jpeg_bytes, "b.png"])               # one request, [B, 1]
        for result in detector.stream(paths, concurrency=8):                  # async requests, as they complete
            print(result.item, result.detections if result.ok else result.error)

Command line (``python tools/client.py`` or ``yolo-triton-client``; ``--help`` lists every flag)::

    python tools/client.py image photo.jpg more.png photos/ --concurrency 8 --json
    python tools/client.py video clip.mp4 -o annotated.mp4
    python tools/client.py dummy -i

The client sends the encoded bytes as they are: the server decodes, letterboxes and scales the boxes back. It
decodes an image only to draw boxes on it (``-o``), and a video's frames only to re-encode them as JPEG.

Modules: ``errors`` (the exceptions), ``retry`` (the policy), ``transport`` (tritonclient's gRPC and HTTP clients,
and what gRPC's channel does itself: round robin, retries), ``servers`` (our balancing, cool-down and retry loop),
``results`` (detections), ``api`` (``Detector``), ``draw``, ``cli``. docs/client.md is the user's guide.
"""
from .api import CONF_PARAMETER, DEFAULT_MODEL, IOU_PARAMETER, MAX_DET_PARAMETER, Detector
from .cli import build_parser, main
from .draw import class_color, draw_detections, dummy_image
from .errors import (
    TRANSIENT,
    BackendUnhealthy,
    ClientError,
    ClientTimeout,
    DeadlineExceeded,
    InputError,
    ModelNotReady,
    ServerError,
    ServerUnreachable,
    WrongModel,
    is_transient,
)
from .results import Detection, Item, ItemResult, image_size, parse_result, read_item
from .retry import DEFAULT_RETRY, RetryPolicy
from .transport import DEFAULT_URLS, PROTOCOLS, split_urls

__all__ = [
    "BackendUnhealthy", "CONF_PARAMETER", "ClientError", "ClientTimeout", "DEFAULT_MODEL", "DEFAULT_RETRY",
    "DEFAULT_URLS", "DeadlineExceeded", "Detection", "Detector", "IOU_PARAMETER", "InputError", "Item", "ItemResult",
    "MAX_DET_PARAMETER", "ModelNotReady", "PROTOCOLS", "RetryPolicy", "ServerError", "ServerUnreachable", "TRANSIENT",
    "WrongModel", "build_parser", "class_color", "draw_detections", "dummy_image", "image_size", "is_transient", "main",
    "parse_result", "read_item", "split_urls",
]
