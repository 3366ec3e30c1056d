"""Fixtures: real photos, exported ONNX models, and one real tritonserver for the whole session.

The server runs the model repository exactly as ``make serve`` writes it, for two specs: a narrow, small-input
YOLOv7 (fast on 2 CPU cores, used by most tests) and the full 640 YOLOv7.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import pytest
import skimage

from yolo_triton.placement import PRESETS
from yolo_triton.repository import repository_files, write_repository
from yolo_triton.serving.triton import TritonServer

from .helpers import FULL, LAYOUT_SPECS, PHOTOS, RECT, SMALL, TORCH_SPECS, V4, V4_TINY
from .reference import RectReference, Reference

ROOT = Path(__file__).resolve().parent.parent
PHOTO_DIR = Path(skimage.__file__).parent / "data"



def _encode(image, ext=".jpg", quality=95):
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buffer = cv2.imencode(ext, image, params)
    assert ok
    return buffer.tobytes()


@pytest.fixture(scope="session")
def photos():
    """Encoded real photos at several sizes and aspect ratios: name → bytes."""
    read = lambda name: cv2.imread(str(PHOTO_DIR / name), cv2.IMREAD_COLOR)  # noqa: E731
    astronaut, chelsea, coffee = read("astronaut.png"), read("chelsea.png"), read("coffee.png")
    motorcycle, rocket = read("motorcycle_left.png"), read("rocket.jpg")
    return {
        "astronaut_square_png": (PHOTO_DIR / "astronaut.png").read_bytes(),
        "chelsea_landscape_png": (PHOTO_DIR / "chelsea.png").read_bytes(),
        "rocket_jpg": (PHOTO_DIR / "rocket.jpg").read_bytes(),
        "coffee_landscape_jpg": _encode(coffee),
        "motorcycle_portrait_jpg": _encode(cv2.rotate(motorcycle, cv2.ROTATE_90_CLOCKWISE)),
        "chelsea_tiny_jpg": _encode(cv2.resize(chelsea, (23, 15), interpolation=cv2.INTER_AREA)),
        "astronaut_4k_jpg": _encode(cv2.resize(astronaut, (4400, 2900), interpolation=cv2.INTER_CUBIC), quality=90),
        "rocket_gray_png": _encode(cv2.cvtColor(rocket, cv2.COLOR_BGR2GRAY), ".png"),
    }


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory):
    """Spec name → ONNX exported with seeded random weights (cached in build/artifacts/test between runs); next to
    each, ``<same>.pt``: the RUNTIME=torch artifact of the same weights."""
    from build import create_onnx
    # the cache key includes the architecture's source, so a changed init or layer never reuses a stale file
    sources = ("yolo_triton/models/yolov7.py", "yolo_triton/models/yolov7_layers.py", "yolo_triton/models/darknet.py",
               "yolo_triton/models/darknet_cfg.py", "yolo_triton/specs.py", "build/create_onnx.py",
               "yolo_triton/models/torch_artifact.py")
    code = hashlib.sha256(b"".join((ROOT / source).read_bytes() for source in sources)).hexdigest()[:12]
    cache = ROOT / "build" / "artifacts" / "test" / code
    paths = {}
    for spec in (SMALL, FULL, V4, V4_TINY, RECT):
        path = cache / f"{spec.name}-{spec.input_size[0]}x{spec.input_size[1]}-w{spec.width_multiple}-seed0.onnx"
        if not path.exists():
            create_onnx.export_onnx(spec, path, seed=0, save_torch=path.with_suffix(".pt"))
        paths[spec.name] = path
    return paths


@pytest.fixture(scope="session")
def repository(tmp_path_factory, onnx_models):
    path = write_repository(tmp_path_factory.mktemp("model_repository"), [SMALL, FULL, V4, V4_TINY, RECT],
                            onnx_files=onnx_models)
    # RUNTIME=torch on the CPU: the same weights as SMALL and V4_TINY, our PyTorch modules as the detector
    for spec in TORCH_SPECS:
        source = spec.name[: -len("_torch")]
        write_repository(path, [spec], PRESETS["cpu"].replace(runtime="torch"), torch_files={spec.name: onnx_models[source].with_suffix(".pt")})
    for spec in LAYOUT_SPECS.values():  # their postprocess models only: tests feed them the detector's outputs
        for relative, text in repository_files(spec).items():
            if relative.startswith(f"{spec.postprocess_name}/"):
                (path / relative).parent.mkdir(parents=True, exist_ok=True)
                (path / relative).write_text(text)
    return path


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with TritonServer(repository, log_path=log, extra=["--log-verbose=0"]) as running:
        yield running
    if os.environ.get("CI"):
        print(running.log_tail(40))


@pytest.fixture(scope="session")
def rect_frames():
    """Real photos cut to the shapes cameras send: 16:9 video frames (JPEG), a 4:3 photo, a 3:2 one (its own canvas,
    224×320, is no bucket: the server pads it to 256×320) and a portrait 9:16 (tests/helpers.py ``RECT_CANVAS``)."""
    astronaut = cv2.resize(cv2.imread(str(PHOTO_DIR / "astronaut.png")), (2048, 2048), interpolation=cv2.INTER_CUBIC)
    coffee = cv2.imread(str(PHOTO_DIR / "coffee.png"))
    return {
        "astronaut_1920x1080": _encode(cv2.resize(astronaut[400:1552], (1920, 1080), interpolation=cv2.INTER_AREA)),
        "coffee_1280x720": _encode(cv2.resize(coffee[31:369], (1280, 720), interpolation=cv2.INTER_CUBIC)),
        "astronaut_640x480": _encode(cv2.resize(astronaut[256:1792], (640, 480), interpolation=cv2.INTER_AREA)),
        "chelsea_451x300": (PHOTO_DIR / "chelsea.png").read_bytes(),
        "astronaut_1080x1920": _encode(cv2.resize(astronaut[:, 400:1552], (1080, 1920), interpolation=cv2.INTER_AREA)),
    }


@pytest.fixture(scope="session")
def reference_small(onnx_models):
    return Reference(onnx_models[SMALL.name], SMALL.input_size)


@pytest.fixture(scope="session")
def reference_full(onnx_models):
    return Reference(onnx_models[FULL.name], FULL.input_size)


@pytest.fixture(scope="session")
def reference_rect(onnx_models):
    return RectReference(onnx_models[RECT.name], max(RECT.input_size))


@pytest.fixture(scope="session")
def reference_v4(onnx_models):
    return {spec.name: Reference(onnx_models[spec.name], spec.input_size, spec.fit) for spec in (V4, V4_TINY)}


@pytest.fixture(params=["grpc", "http"])
def protocol(request):
    return request.param


@pytest.fixture(scope="session")
def photo_dir(photos, tmp_path_factory):
    """The photos as files: name.jpg / name.png."""
    directory = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        stem, ext = name.rsplit("_", 1)
        (directory / f"{stem}.{ext}").write_bytes(photos[name])
    return directory
