"""Whatever bytes clients send: correct detections or a clear per-request error, the server up, nothing lost.

Every case is sent as its own request, all at once (so they share dynamic batches), over gRPC and HTTP; good
ones must equal the reference, bad ones must fail alone with INVALID_ARG and a message naming the problem.
The decode functions are also fuzzed (hypothesis): random and mutated bytes either decode or raise
ImageDecodeError, nothing else. FUZZ_EXAMPLES sets the count (CI: 300; `make fuzz`: 100,000).
"""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from yolo_triton.pipeline import decode, preprocess as pre

from ..helpers import SMALL, client_for
from ..helpers import LOW_CONF, assert_same_detections

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))


def _pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR declaring width×height, with (almost) no pixel data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def cases(photos):
    """name → (bytes, None for "decodes" or a substring of the expected error)."""
    photo = Image.open(io.BytesIO(photos["coffee_landscape_jpg"])).convert("RGB")
    small = photo.resize((200, 133))
    jpeg = _pil_bytes(small, "JPEG", quality=92)
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION] = 6
    rng = np.random.default_rng(7)
    return {
        "empty": (b"", "empty input"),
        "random_bytes": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "cannot decode"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 3], "truncated JPEG"),
        "jpeg_header_only": (jpeg[:200], "cannot decode"),
        "png_bomb_100kx100k": (_png_declaring(100_000, 100_000), "too many pixels"),
        "png_bomb_12kx12k": (_png_declaring(12_000, 12_000), "pixels, over the limit of 100000000"),
        "text_file": (b"hello, this is not an image\n" * 20, "cannot decode"),
        "gif": (_pil_bytes(small.convert("P"), "GIF"), "unsupported image format GIF"),
        "tiff": (_pil_bytes(small, "TIFF"), "unsupported image format TIFF"),
        "one_pixel": (_pil_bytes(photo.resize((1, 1)), "PNG"), None),
        "extreme_10000x10": (_pil_bytes(photo.resize((10000, 10)), "PNG"), None),
        "grayscale_jpeg": (_pil_bytes(small.convert("L"), "JPEG"), None),
        "cmyk_jpeg": (_pil_bytes(small.convert("CMYK"), "JPEG"), None),
        "png_16bit": (_pil_bytes(Image.fromarray((np.asarray(small.convert("L"), np.uint16) * 257)), "PNG"), None),
        "png_alpha": (_pil_bytes(small.convert("RGBA"), "PNG"), None),
        "progressive_jpeg": (_pil_bytes(small, "JPEG", progressive=True, quality=90), None),
        "exif_rotated_jpeg": (_pil_bytes(small, "JPEG", exif=exif.tobytes()), None),
        "good_photo": (photos["rocket_jpg"], None),
    }


def test_every_case_answered_alone(server, protocol, cases, reference_small):
    """All cases at once, twice over, as separate concurrent requests: each gets exactly its own answer."""
    from tritonclient.utils import InferenceServerException

    module, client = client_for(server, protocol)
    work = [(name, data, error) for name, (data, error) in cases.items()] * 2

    def request(data):
        tensor = module.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        return tensor

    outputs = [module.InferRequestedOutput(name) for name in ("num_detections", "boxes", "scores", "classes", "class_names")]

    def result_of(future):
        try:
            result = future.get_result() if protocol == "http" else future.result()
        except InferenceServerException as error:
            return error
        if isinstance(result, InferenceServerException):
            return result
        return {o.name(): result.as_numpy(o.name()) for o in outputs}

    if protocol == "http":  # the HTTP client is gevent-based: its own async requests, not threads
        futures = [client.async_infer(SMALL.ensemble_name, [request(d)], outputs=outputs, parameters=LOW_CONF) for _, d, _ in work]
    else:
        import queue

        futures = []
        for _, data, _ in work:
            box = queue.Queue()
            client.async_infer(SMALL.ensemble_name, [request(data)], callback=lambda result, error, box=box: box.put(error or result),
                               outputs=outputs, parameters=LOW_CONF)
            futures.append(box)
    answers = [result_of(f) if protocol == "http" else result_of(_Done(f.get(timeout=300))) for f in futures]
    for (name, data, expected_error), answer in zip(work, answers):
        if expected_error is None:
            assert isinstance(answer, dict), f"{name}: {answer}"
            try:
                assert_same_detections(answer, reference_small.detect(data, conf=LOW_CONF["conf_threshold"]))
            except AssertionError as error:
                raise AssertionError(f"{name}: {error}") from None
        else:
            assert not isinstance(answer, dict), f"{name} was answered with detections"
            invalid = "INVALID_ARG" in str(answer.status()) or str(answer.status()) == "400"  # gRPC / HTTP
            assert invalid and expected_error in answer.message(), (name, answer.status(), answer.message())
    assert server.is_alive() and server.is_ready()


class _Done:
    """A finished gRPC callback's value, read like a future."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def test_exif_orientation_is_applied(cases):
    """Documented choice (README, Semantics): EXIF orientation is applied, boxes refer to the upright image."""
    data, _ = cases["exif_rotated_jpeg"]
    decoded = decode.decode_image(data)
    assert decoded.shape[:2] == (200, 133)  # stored 200 wide × 133 high, orientation 6: upright is 133 × 200


def test_limits_are_configurable():
    data = _pil_bytes(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(decode.ImageDecodeError, match="over the limit of 50000"):
        decode.decode_image(data, decode.DecodeLimits(max_pixels=50_000))
    with pytest.raises(decode.ImageDecodeError, match="bytes, over the limit of 100"):
        decode.decode_image(data, decode.DecodeLimits(max_bytes=100))


def _seed_images():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    return [_pil_bytes(image, "JPEG", quality=80), _pil_bytes(image, "PNG"), _pil_bytes(image, "BMP"),
            _pil_bytes(image, "WEBP", quality=80)]


SEEDS = _seed_images()


@st.composite
def mutated_images(draw):
    """A valid small image with a few bytes flipped, a slice cut out, or garbage appended."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        start = draw(st.integers(0, len(data)))
        data = data[:start] + data[start + draw(st.integers(0, 64)):]
    return bytes(data) + draw(st.binary(max_size=16))


def _decode_or_clear_error(data: bytes):
    try:
        image = decode.decode_image(data, decode.DecodeLimits(max_bytes=1 << 20, max_pixels=1 << 22))
    except decode.ImageDecodeError:
        return
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    tensor, meta = pre.preprocess_image(data, (64, 64))
    assert tensor.shape == (3, 64, 64) and np.isfinite(tensor).all() and meta.gain_x > 0 and meta.gain_y > 0


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_images(), st.binary(max_size=2048)))
def test_fuzz_decode_never_fails_unclearly(data):
    _decode_or_clear_error(data)
