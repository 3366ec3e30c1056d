"""Client helpers for the end-to-end tests: thin tritonclient calls, as a user's client would make them."""
from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from yolo_triton import specs
from yolo_triton.client import Detection
from yolo_triton.serving.processes import children
from yolo_triton.serving.triton import free_ports

# most tests use a narrow YOLOv7 at a small input (fast on 2 CPU cores); one uses the full 640 model
SMALL = specs.YOLOV7.with_overrides(name="yolov7_small", input_size=(256, 320), width_multiple=0.25)
# the full model's config default differs from DetectionParams' built-in 0.25, so a test can tell that the
# server really applies the value in config.pbtxt
FULL = specs.YOLOV7.with_overrides(conf_threshold=0.3)
# YOLOv4 from the built-in darknet cfg: the full network at a smaller input, and yolov4-tiny as it ships
V4 = specs.YOLOV4.with_overrides(name="yolov4_small", input_size=(320, 320))
V4_TINY = specs.YOLOV4_TINY
# RUNTIME=torch (our PyTorch modules as the detector, here on the CPU) with the weights of SMALL and V4_TINY
# rectangular inference (detect.py's auto=True letterbox): the narrow YOLOv7 at a square 320 with its shape buckets
RECT = SMALL.with_overrides(name="yolov7_rect", input_size=(320, 320), rect=True)
# the canvas (h, w) each of conftest's rect_frames takes at 320
RECT_CANVAS = {"astronaut_1920x1080": (192, 320), "coffee_1280x720": (192, 320), "astronaut_640x480": (256, 320),
               "chelsea_451x300": (256, 320), "astronaut_1080x1920": (320, 192)}
TORCH_SPECS = (SMALL.with_overrides(name="yolov7_small_torch"), V4_TINY.with_overrides(name="yolov4_tiny_torch"),
               RECT.with_overrides(name="yolov7_rect_torch"))
# postprocess-only models, one per detector output layout, fed synthetic detector outputs by tests/test_layouts.py
LAYOUT_SPECS = {
    layout: specs.YOLOV7.with_overrides(name=f"layout_{layout}", layout=layout, input_size=(320, 320))
    for layout in specs.LAYOUT_NAMES
}

ROOT = Path(__file__).resolve().parent.parent


def client_for(server, protocol):
    if protocol == "grpc":
        import tritonclient.grpc as module

        return module, module.InferenceServerClient(server.grpc_url)
    import tritonclient.http as module

    return module, module.InferenceServerClient(server.http_url, concurrency=16, network_timeout=300)


def infer_images(module, client, model, images, parameters=None, timeout=None):
    """One request holding ``images`` (list of bytes) → dict of output arrays."""
    tensor = module.InferInput(specs.ENSEMBLE_INPUT, [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image] for image in images], dtype=object))
    outputs = [module.InferRequestedOutput(name) for name in specs.ENSEMBLE_OUTPUTS]
    result = client.infer(model, [tensor], outputs=outputs, parameters=parameters)
    return {name: result.as_numpy(name) for name in specs.ENSEMBLE_OUTPUTS}



def start_serve(repository, log_path, *options, env=None, timeout=300):
    """``yolo_triton.serving.serve`` as `make serve` runs it, on free ports, loading the small ensemble → (process,
    ports).

    ``options``: more serve flags (before ``--``). Waits until the plain HTTP endpoint is ready."""
    http, grpc, metrics, https = free_ports(4)
    command = [sys.executable, "-m", "yolo_triton.serving.serve", "--repository", str(repository),
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
               "--https-port", str(https), "--models", SMALL.name, *options, "--", "--log-verbose=0"]
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve.py exited with {process.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return process, {"http": http, "grpc": grpc, "metrics": metrics, "https": https}
        except OSError:
            time.sleep(0.5)
    stop_serve(process)
    raise TimeoutError(f"serve.py not ready after {timeout} s:\n{Path(log_path).read_text()[-3000:]}")


def stop_serve(process, timeout=60, number=signal.SIGINT):
    """SIGINT, as Ctrl-C (serve.py passes it on to tritonserver); if that hangs, serve.py and the server (a
    session of its own) are killed with their children."""
    if process.poll() is None:
        process.send_signal(number)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        for pid in [*child_pids(process.pid), process.pid]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()


def child_pids(pid: int) -> list:
    """The direct children of ``pid``."""
    return list(children(pid))


# ---- shared by the end-to-end tests

# random weights put most scores near the official class-bias prior; a low threshold gives many boxes to compare
LOW_CONF = {"conf_threshold": 0.02}


def assert_same_detections(result, expected, index=0, box_tol=0.05, score_tol=1e-4):
    """The server's detections of one image = the reference's: same count; position by position the same class,
    score and box, except that two detections whose scores lie within ``score_tol`` may come in either order (two
    runtimes' rounding decides a near tie); scores in descending order."""
    n = int(result["num_detections"][index, 0])
    boxes, scores, classes = expected
    assert n == len(scores), f"{n} detections, reference has {len(scores)}"
    got_boxes, got_scores, got_classes = (result[k][index, :n] for k in ("boxes", "scores", "classes"))
    assert (np.diff(got_scores) <= 0).all(), "detections not sorted by score"
    free = np.ones(n, bool)
    for i in range(n):
        near = np.flatnonzero(free & (np.abs(got_scores - scores[i]) <= score_tol) & (got_classes == classes[i])
                              & (np.abs(got_boxes - boxes[i]).max(axis=1) <= box_tol))
        assert len(near), (f"reference detection {i} (class {classes[i]}, score {scores[i]:.5f}, box {boxes[i]}) "
                           f"has no counterpart; server at {i}: class {got_classes[i]}, score {got_scores[i]:.5f}, "
                           f"box {got_boxes[i]}")
        j = near[np.argmin(np.abs(near - i))]  # the nearest position: the same one unless a near tie swapped them
        assert abs(j - i) <= 2 and abs(got_scores[j] - got_scores[i]) <= 2 * score_tol, (i, j)
        free[j] = False
    names = [name.decode() for name in result["class_names"][index, :n]]
    assert names == [specs.COCO80_NAMES[c] for c in got_classes]
    # padding beyond the real detections is marked, never mistaken for a box
    assert (result["classes"][index, n:] == -1).all()


MODEL = SMALL.ensemble_name
CONF = 0.02  # random weights: a low threshold gives boxes to compare
PHOTOS = ("rocket_jpg", "chelsea_landscape_png", "motorcycle_portrait_jpg", "rocket_gray_png", "chelsea_tiny_jpg")
BOX_TOL = 0.06  # the server matches the reference to 0.05 px (test_ensemble); JSON rounds to 0.01


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "client.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def url_for(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


def json_records(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def assert_matches(detections, expected):
    """``detections``: JSON dicts or Detection objects; ``expected``: the reference's (boxes, scores, classes)."""
    boxes, scores, classes = expected
    assert len(detections) == len(scores), f"{len(detections)} detections, reference has {len(scores)}"
    if detections and isinstance(detections[0], Detection):
        detections = [d.to_dict() | {"box": list(d.box), "score": d.score} for d in detections]
    assert [d["class_id"] for d in detections] == classes.tolist()
    np.testing.assert_allclose([d["score"] for d in detections], scores, atol=1e-4)
    np.testing.assert_allclose(np.array([d["box"] for d in detections]).reshape(-1, 4), boxes, atol=BOX_TOL)


def make_certificates(directory: Path) -> dict:
    """A CA, a server certificate for localhost signed by it, and a client certificate (mutual TLS)."""
    if shutil.which("openssl"):
        def openssl(*args):
            subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=yolo-triton test CA")
        (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                    "-subj", f"/CN={'localhost' if name == 'server' else 'client'}")
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                    "-out", f"{name}.pem", "-days", "2", *extra)
    else:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
            from cryptography.x509.oid import NameOID
        except ImportError:
            pytest.skip("neither the openssl CLI nor the cryptography package: cannot make test certificates")
        import ipaddress

        now = datetime.datetime.now(datetime.timezone.utc)

        def issue(common_name, issuer_name=None, issuer_key=None, ca=False, san=None):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                       .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
            if san:
                builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
            certificate = builder.sign(issuer_key or key, hashes.SHA256())
            return key, certificate

        def save(name, key, certificate):
            (directory / f"{name}.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
            (directory / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

        ca_key, ca_cert = issue("yolo-triton test CA", ca=True)
        save("ca", ca_key, ca_cert)
        save("server", *issue("localhost", ca_cert.subject, ca_key,
                              san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
        save("client", *issue("client", ca_cert.subject, ca_key))
    return {"ca": directory / "ca.pem", "server": directory / "server.pem", "server_key": directory / "server.key",
            "client": directory / "client.pem", "client_key": directory / "client.key"}
