"""The client (tools/client.py and yolo_triton.client) against the real session tritonserver.

Every result is checked against the independent reference (tests/reference.py: onnxruntime on the same ONNX, its
own letterbox, decode, NMS and scale-back), never against the client's own code. The CLI runs as a subprocess,
as a user runs it. One more server, with mutual TLS on gRPC, checks -s/-r/-p/-x.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from yolo_triton.client import (
    ClientError,
    Detection,
    Detector,
    InputError,
    ModelNotReady,
    ServerError,
    ServerUnreachable,
    WrongModel,
    image_size,
    split_urls,
)
from yolo_triton.serving.triton import TritonServer, free_ports

from ..helpers import CONF, MODEL, PHOTOS, SMALL, assert_matches, json_records, make_certificates, run_cli, url_for

def photo_files(photo_dir):
    return sorted(photo_dir.glob("*.*"))


# ------------------------------------------------------------------------------------------ CLI, images


def test_cli_json_several_files_match_reference(server, protocol, photo_dir, reference_small):
    files = photo_files(photo_dir)
    run = run_cli("image", *files, "-m", MODEL, "-u", url_for(server, protocol), "--protocol", protocol,
                  "--json", "--conf", CONF, "--iou", 0.5, "--max-det", 40)
    assert run.returncode == 0, run.stderr
    records = json_records(run.stdout)
    assert [r["file"] for r in records] == [str(f) for f in files]  # input order, whatever order answers came in
    some = 0
    for record, path in zip(records, files):
        data = path.read_bytes()
        expected = reference_small.detect(data, conf=CONF, iou=0.5, max_det=40)
        assert_matches(record["detections"], expected)
        height, width = reference_small.raw(data)[1]
        assert (record["width"], record["height"]) == (width, height)
        assert all(set(d) == {"class_id", "name", "score", "box"} for d in record["detections"])
        some += len(expected[1])
    assert some > 0, "the reference finds nothing: the comparison would prove nothing"


def test_cli_and_api_detect_py_options_match_reference(server, photo_dir, reference_small):
    """--classes / --agnostic-nms / --multi-label (and the API's keywords): the official NMS's options."""
    files = photo_files(photo_dir)
    plain = [reference_small.detect(f.read_bytes(), conf=CONF) for f in files]
    counts = np.bincount(np.concatenate([p[2] for p in plain]))
    kept = sorted(int(c) for c in np.argsort(-counts, kind="stable")[:3])  # the three most frequent classes
    run = run_cli("image", *files, "-m", MODEL, "-u", server.grpc_url, "--json", "--conf", CONF,
                  "--classes", *kept, "--agnostic-nms", "--multi-label")
    assert run.returncode == 0, run.stderr
    found = 0
    for record, path in zip(json_records(run.stdout), files):
        expected = reference_small.detect(path.read_bytes(), conf=CONF, classes=kept, agnostic=True, multi_label=True)
        assert_matches(record["detections"], expected)
        found += len(expected[1])
    assert found > 0
    with Detector(server.grpc_url, MODEL) as detector:
        data = files[0].read_bytes()
        assert_matches(detector.detect(data, conf=CONF, classes=kept[:1]),
                       reference_small.detect(data, conf=CONF, classes=kept[:1]))


def test_cli_text_output(server, photo_dir, reference_small):
    path = photo_dir / "motorcycle_portrait.jpg"
    run = run_cli("image", path, "-m", MODEL, "-u", server.grpc_url, "--conf", CONF, "--max-det", 5)
    assert run.returncode == 0, run.stderr
    header, *lines = run.stdout.splitlines()
    boxes, scores, classes = reference_small.detect(path.read_bytes(), conf=CONF, max_det=5)
    assert header == f"{path}: {len(scores)} detections" and len(scores) == 5
    for line, box, score, cls in zip(lines, boxes, scores, classes):
        fields = line.split()
        assert int(fields[0]) == cls and abs(float(fields[-5]) - score) < 1e-3
        np.testing.assert_allclose([float(f.split("=")[1]) for f in fields[-4:]], box, atol=0.06)


def test_cli_directory_with_concurrency_and_batch(server, photo_dir, reference_small, tmp_path):
    directory = tmp_path / "album"
    shutil.copytree(photo_dir, directory / "a")
    shutil.copy(photo_dir / "rocket.jpg", directory / "rocket_copy.JPG")
    (directory / "notes.txt").write_text("not an image, and not an image name: skipped")
    run = run_cli("image", directory, "-m", MODEL, "-u", server.grpc_url, "--json", "--conf", CONF,
                  "--concurrency", 4, "--batch", 3, "--progress")
    assert run.returncode == 0, run.stderr
    records = json_records(run.stdout)
    expected_files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    assert sorted(r["file"] for r in records) == sorted(map(str, expected_files))
    for record in records:
        assert_matches(record["detections"], reference_small.detect(Path(record["file"]).read_bytes(), conf=CONF))
    assert "100%" in run.stderr and f"{len(expected_files)}/{len(expected_files)}" in run.stderr  # the tqdm bar


@pytest.mark.parametrize("batch", [1, 4])
def test_cli_bad_file_is_a_per_file_error(server, photo_dir, reference_small, tmp_path, batch):
    junk = tmp_path / "junk.jpg"
    junk.write_text("this is not an image")
    missing = tmp_path / "missing.png"
    good = [photo_dir / "rocket.jpg", photo_dir / "chelsea_tiny.jpg"]
    run = run_cli("image", good[0], junk, missing, good[1], "-m", MODEL, "-u", server.grpc_url, "--json",
                  "--conf", CONF, "--batch", batch)
    assert run.returncode == 1
    assert f"{junk}: error: server error (INVALID_ARGUMENT): " in run.stderr and "cannot decode 20 bytes as an image" in run.stderr
    assert f"{missing}: error: cannot read" in run.stderr
    records = {r["file"]: r for r in json_records(run.stdout)}
    assert "cannot decode" in records[str(junk)]["error"] and "error" in records[str(missing)]
    for path in good:  # the others are answered (with --batch, the refused request is retried image by image)
        assert_matches(records[str(path)]["detections"], reference_small.detect(path.read_bytes(), conf=CONF))


def test_cli_annotated_images(server, photo_dir, tmp_path):
    source = photo_dir / "motorcycle_portrait.jpg"
    out = tmp_path / "boxes.png"
    run = run_cli("image", source, "-m", MODEL, "-u", server.grpc_url, "--conf", CONF, "-o", out)
    assert run.returncode == 0, run.stderr
    original = cv2.imdecode(np.frombuffer(source.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    drawn = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert drawn is not None and drawn.shape == original.shape
    assert (np.abs(drawn.astype(int) - original).max(axis=2) > 60).mean() > 0.001  # boxes and labels are there
    # several inputs: -o is a directory of annotated copies under the inputs' names
    run = run_cli("image", *photo_files(photo_dir), "-m", MODEL, "-u", server.grpc_url, "--conf", CONF, "-o", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    for path in photo_files(photo_dir):
        copy = cv2.imread(str(tmp_path / "out" / path.name), cv2.IMREAD_COLOR)
        assert copy is not None and copy.shape[:2] == Image.open(path).size[::-1]


# ------------------------------------------------------------------------------------------ CLI, video and dummy


def _write_video(path, frames, fps):
    for fourcc in ("MJPG", "mp4v"):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, frames[0].shape[1::-1])
        if writer.isOpened():
            for frame in frames:
                writer.write(frame)
            writer.release()
            return
    pytest.skip("this OpenCV writes neither MJPG nor mp4v")


def _read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames, capture.get(cv2.CAP_PROP_FPS)
        frames.append(frame)


def test_cli_video(server, photos, reference_small, tmp_path):
    stills = [cv2.imdecode(np.frombuffer(photos[n], np.uint8), cv2.IMREAD_COLOR) for n in PHOTOS[:3]]
    frames = [cv2.resize(stills[i % 3], (320, 240), interpolation=cv2.INTER_AREA) for i in range(7)]
    source = tmp_path / "clip.avi"
    _write_video(source, frames, 10)
    decoded, _ = _read_video(source)  # what the client will read (MJPG is lossy)
    assert len(decoded) == 7
    out = tmp_path / "annotated.mp4"
    run = run_cli("video", source, "-m", MODEL, "-u", server.grpc_url, "--json", "--conf", CONF,
                  "--concurrency", 3, "--batch", 2, "-o", out, "-f", 5)
    assert run.returncode == 0, run.stderr
    records = json_records(run.stdout)
    assert [r["frame"] for r in records] == list(range(7))
    for record, frame in zip(records, decoded):
        assert (record["file"], record["width"], record["height"]) == (str(source), 320, 240)
        # the documented contract: each frame is sent as a quality-95 JPEG
        jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        assert_matches(record["detections"], reference_small.detect(jpeg, conf=CONF))
    written, fps = _read_video(out)
    assert len(written) == 7 and written[0].shape == (240, 320, 3) and fps == pytest.approx(5)


def test_cli_dummy_with_model_info(server):
    run = run_cli("dummy", "-i", "-m", MODEL, "-u", server.http_url, "--protocol", "http", "--json")
    assert run.returncode == 0, run.stderr
    records = json_records(run.stdout)
    assert [next(iter(r)) for r in records] == ["model metadata", "model config", "file", "inference statistics"]
    assert records[0]["model metadata"]["inputs"][0]["name"] == "IMAGE"
    assert records[1]["model config"]["max_batch_size"] == SMALL.max_batch_size
    assert records[2]["file"] == "<dummy>" and (records[2]["width"], records[2]["height"]) == (640, 480)
    stats = records[3]["inference statistics"]["model_stats"][0]
    assert stats["name"] == MODEL and int(stats["inference_stats"]["success"]["count"]) >= 1
    text = run_cli("dummy", "-i", "-m", MODEL, "-u", server.grpc_url)  # the human form
    assert text.returncode == 0, text.stderr
    assert "model metadata:" in text.stdout and "inference statistics:" in text.stdout
    assert "<dummy>: " in text.stdout


def test_cli_clear_failures(server):
    port = free_ports(1)[0]
    run = run_cli("dummy", "-u", f"localhost:{port}")
    assert run.returncode == 1 and f"error: cannot reach Triton at localhost:{port}" in run.stderr
    run = run_cli("dummy", "-u", server.grpc_url, "-m", "no_such_model")
    assert run.returncode == 1 and "model 'no_such_model' is not ready" in run.stderr and MODEL in run.stderr
    run = run_cli("dummy", "-u", server.grpc_url, "-m", SMALL.name)  # the bare detector takes tensors, not images
    assert run.returncode == 1 and f"use an ensemble: {MODEL}" in run.stderr


@pytest.mark.parametrize("args, message", [
    (["video", "a.mp4", "b.mp4"], "exactly one video"),
    (["image", "x.jpg", "-r", "ca.pem"], "add -s"),
    (["image", "x.jpg", "-s", "-p", "client.key"], "needs both -p"),
    (["dummy", "x.jpg"], "dummy mode takes no inputs"),
])
def test_cli_usage_errors(capsys, args, message):
    from yolo_triton.client import main

    with pytest.raises(SystemExit) as exited:  # argument checks, before any connection
        main(args)
    assert exited.value.code == 2 and message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ Python API


def test_api_matches_reference(server, protocol, photos, photo_dir, reference_small):
    names = list(PHOTOS)
    expected = [reference_small.detect(photos[n], conf=CONF) for n in names]
    with Detector(url_for(server, protocol), MODEL, protocol) as detector:
        single = detector.detect(photos[names[0]], conf=CONF)
        assert all(isinstance(d, Detection) for d in single)
        assert_matches(single, expected[0])
        assert_matches(detector.detect(photo_dir / "rocket.jpg", conf=CONF), reference_small.detect(photos["rocket_jpg"], conf=CONF))
        for got, want in zip(detector.detect_batch([photos[n] for n in names], conf=CONF), expected):
            assert_matches(got, want)
        many = detector.detect_many([photos[n] for n in names] * 3, concurrency=5, batch_size=2, conf=CONF)
        for got, want in zip(many, expected * 3):
            assert_matches(got, want)
        capped = detector.detect(photos[names[0]], conf=CONF, iou=0.3, max_det=2)
        assert_matches(capped, reference_small.detect(photos[names[0]], conf=CONF, iou=0.3, max_det=2))


def test_api_errors(server, protocol, photos):
    url = url_for(server, protocol)
    with pytest.raises(ServerUnreachable, match="cannot reach Triton"):
        Detector(f"localhost:{free_ports(1)[0]}", MODEL, protocol)
    with pytest.raises(ModelNotReady, match="'no_such_model' is not ready"):
        Detector(url, "no_such_model", protocol)
    with pytest.raises(WrongModel):
        Detector(url, SMALL.name, protocol)
    with Detector(url, MODEL, protocol) as detector:
        with pytest.raises(ServerError, match="cannot decode 20 bytes as an image") as raised:
            detector.detect(b"this is not an image")
        assert raised.value.status in ("INVALID_ARGUMENT", "400") and "cannot decode" in raised.value.message
        with pytest.raises(ServerError, match="conf_threshold must be a number in"):
            detector.detect(photos["rocket_jpg"], conf=1.5)
        with pytest.raises(InputError, match="cannot read"):
            detector.detect("/no/such/file.jpg")
        mixed = detector.detect_many([photos["rocket_jpg"], b"junk", "/no/such.png"], batch_size=3, return_exceptions=True)
        assert isinstance(mixed[0], list) and isinstance(mixed[1], ServerError) and isinstance(mixed[2], InputError)
        with pytest.raises(ServerError):
            detector.detect_many([photos["rocket_jpg"], b"junk"])
        assert all(isinstance(e, ClientError) for e in mixed[1:])
    with pytest.raises(ServerUnreachable):  # no check at construction: the first request says it
        Detector(f"localhost:{free_ports(1)[0]}", MODEL, protocol, check=False).detect(photos["rocket_jpg"])


def test_image_size_reads_the_header_and_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: the upright image is 20 wide, 40 high
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    upright = cv2.imread(str(path), cv2.IMREAD_COLOR)  # OpenCV applies the orientation, as the server does
    assert image_size(path) == (upright.shape[1], upright.shape[0]) == (20, 40)
    assert image_size(path.read_bytes()) == (20, 40)
    assert image_size(b"not an image") is None


def test_urls_and_grpc_targets():
    assert split_urls(" a:8001, b:8001,") == ["a:8001", "b:8001"]
    # a gRPC ipv4:/ipv6: target keeps its own comma-separated addresses: one channel, balanced by gRPC
    assert split_urls("ipv4:127.0.0.1:1,127.0.0.1:2,c:3") == ["ipv4:127.0.0.1:1,127.0.0.1:2", "c:3"]
    assert split_urls(["ipv6:[::1]:1,[::1]:2"]) == ["ipv6:[::1]:1,[::1]:2"]
    with pytest.raises(ValueError, match="is a gRPC target; HTTP takes host:port"):
        Detector("dns:///triton:8000", MODEL, "http", check=False)
    with pytest.raises(ValueError, match="the same server twice"):
        Detector("a:8001,grpc://a:8001", MODEL, check=False)


# ------------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="session")
def tls_server(repository, tmp_path_factory):
    """A second tritonserver, gRPC with mutual TLS, serving only the small ensemble (its steps load with it)."""
    certs = make_certificates(tmp_path_factory.mktemp("tls"))
    server_key = certs["server_key"]
    flags = ["--log-verbose=0", "--model-control-mode=explicit", f"--load-model={MODEL}", "--grpc-use-ssl-mutual=true",
             f"--grpc-server-cert={certs['server']}", f"--grpc-server-key={server_key}", f"--grpc-root-cert={certs['ca']}"]
    log = tmp_path_factory.mktemp("triton_tls") / "tritonserver.log"
    with TritonServer(repository, log_path=log, extra=flags) as running:
        yield running, certs


def test_tls_cli_and_api(tls_server, photo_dir, reference_small):
    running, certs = tls_server
    files = photo_files(photo_dir)[:3]
    tls = ["-s", "-r", certs["ca"], "-p", certs["client_key"], "-x", certs["client"]]
    run = run_cli("image", *files, "-m", MODEL, "-u", running.grpc_url, "--json", "--conf", CONF, *tls)
    assert run.returncode == 0, run.stderr
    for record, path in zip(json_records(run.stdout), files):
        assert record["file"] == str(path)
        assert_matches(record["detections"], reference_small.detect(path.read_bytes(), conf=CONF))
    # without TLS, without the client certificate, without trusting the CA: each a clear failure, with a hint
    for flags, hint in (([], "if the server uses TLS"),
                        (["-s", "-r", certs["ca"]], "requires mutual TLS"),
                        (["-s", "-p", certs["client_key"], "-x", certs["client"]], "not trusted")):
        run = run_cli("image", files[0], "-m", MODEL, "-u", running.grpc_url, *flags)
        assert run.returncode == 1 and "error: cannot reach Triton" in run.stderr and hint in run.stderr, (flags, run.stderr)
        assert run.stdout == ""
    with Detector(running.grpc_url, MODEL, ssl=True, root_certificates=str(certs["ca"]),
                  private_key=str(certs["client_key"]), certificate_chain=str(certs["client"])) as detector:
        assert_matches(detector.detect(files[0], conf=CONF), reference_small.detect(files[0].read_bytes(), conf=CONF))
    with pytest.raises(ServerUnreachable, match="if the server uses TLS"):
        Detector(running.grpc_url, MODEL)
