"""The README's own `make serve` lines for bringing weights, run as a user runs them, one after another on one
checkout: `make serve <the line's variables>`, with files standing in for the user's (the official exporter's
fixtures where there are some, otherwise files of the right format with random weights). Each line must build,
serve exactly the models it asked for (the ensembles of earlier lines stay in model_repository/ and must not be
loaded), answer a photo, and stop cleanly on Ctrl-C."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request

import pytest
import torch

from yolo_triton import specs
from yolo_triton.models import darknet, yolov7
from yolo_triton.repository import read_model_config
from yolo_triton.serving.triton import free_ports

from ..helpers import ROOT, client_for, infer_images
from ..official_format import official_model, save_official
from .test_official_exports import FIXTURES, PHOTOS, assert_official_boxes, photo_bytes

CUSTOM_NAMES = [f"part-{i}" for i in range(80)]  # a user's own class names (obj.names)


def readme_lines() -> list:
    """The `make serve` lines of the README's "Bring your own weights" block, as variable lists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Bring your own weights"):]
    block = section[section.index("```bash") + len("```bash"):section.index("```", section.index("```bash") + 7)]
    lines = [line.split("#")[0].strip() for line in block.splitlines() if line.strip().startswith("make serve")]
    return [shlex.split(line)[2:] for line in lines]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """File name in the README → a file of that kind here."""
    folder = tmp_path_factory.mktemp("user_files")
    v7 = yolov7.init_random_weights(yolov7.build_model(specs.YOLOV7), seed=1).eval()
    v4 = darknet.init_random_weights(darknet.from_spec(specs.YOLOV4), seed=2).eval()
    v4_tiny = darknet.init_random_weights(darknet.from_spec(specs.YOLOV4_TINY), seed=3).eval()
    (folder / "yolov4.cfg").write_text(darknet.builtin_cfg("yolov4"))
    darknet.save_darknet_weights(v4, folder / "yolov4.weights")
    darknet.save_darknet_weights(v4_tiny, folder / "yolov4-tiny.weights")
    (folder / "obj.names").write_text("\n".join(CUSTOM_NAMES) + "\n")
    with torch.no_grad():
        save_official(official_model(v7), folder / "yolov7.pt")
    files = {name: folder / name for name in ("yolov7.pt", "yolov4.cfg", "yolov4.weights", "yolov4-tiny.weights",
                                              "obj.names")}
    files["yolov7-tiny.pt"] = FIXTURES / "yolov7-narrow.pt"  # made by the official code
    files["yolov7-tiny.onnx"] = FIXTURES / "yolov7-narrow-grid-dynbatch.onnx"  # by the official export.py
    return files


def ready(port: int, model: str = "") -> bool:
    path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_readme_serve_lines_from_a_fresh_checkout(user_files, tmp_path):
    lines = readme_lines()
    assert len(lines) >= 4, lines
    repository, artifacts = tmp_path / "model_repository", tmp_path / "artifacts"  # fresh, as a new clone's
    seen_models: set = set()
    for variables in lines:
        assignments = dict(v.split("=", 1) for v in variables)
        for key, value in assignments.items():
            if re.fullmatch(r"(WEIGHTS|CFG|ONNX|LABELS)_\w+", key):
                assignments[key] = str(user_files[value])
        models = assignments.get("MODELS", " ".join(specs.DEFAULT_MODELS)).split()
        http, grpc, metrics, https = free_ports(4)
        command = ["make", "--no-print-directory", "serve", *(f"{k}={v}" for k, v in assignments.items()),
                   f"BUILD_ARGS=--repository {repository} --artifacts {artifacts}",
                   f"SERVE_ARGS=--repository {repository} --http-port {http} --grpc-port {grpc} "
                   f"--metrics-port {metrics} --https-port {https}"]
        log = tmp_path / f"serve_{'_'.join(models)}_{len(seen_models)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, env={**os.environ, "TRITON_ADMIN_KEY": "readme-test"})
        try:
            deadline = time.monotonic() + 900
            while not ready(http):
                assert process.poll() is None, f"{' '.join(variables)}: make serve exited:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"{' '.join(variables)}: not ready:\n{log.read_text()[-4000:]}"
                time.sleep(1)
            for stale in seen_models - set(models):
                assert not ready(http, f"{stale}_e2e"), f"{stale}_e2e of an earlier line was loaded too"
            server = type("Server", (), {"grpc_url": f"localhost:{grpc}"})
            module, client = client_for(server, "grpc")
            for model in models:
                assert ready(http, f"{model}_e2e")
                result = infer_images(module, client, f"{model}_e2e", photo_bytes(),
                                      parameters={"conf_threshold": 0.05})
                names = {name.decode() for row in result["class_names"] for name in row if name}
                if model == "yolov7_tiny":  # the official exporter's files: the official pipeline's boxes
                    default = infer_images(module, client, f"{model}_e2e", photo_bytes())
                    for index, photo in enumerate(PHOTOS):
                        assert_official_boxes(default, index, photo)
                elif "LABELS_" + model in assignments:
                    assert names <= set(CUSTOM_NAMES)
                else:
                    assert names <= set(specs.COCO80_NAMES)
            seen_models |= set(models)
        finally:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches make and the server alike
            try:
                code = process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise
        text = log.read_text()
        # make reports the interrupt with its own exit status; what matters is the server's clean stop
        assert "successfully unloaded" in text and "Traceback" not in text, (code, text[-3000:])
    post = read_model_config(repository / "yolov4_tiny_postprocess" / "config.pbtxt")
    assert json.loads(post.parameters["labels"].string_value) == CUSTOM_NAMES
