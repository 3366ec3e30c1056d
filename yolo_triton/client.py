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
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import itertools
import json
import os
import queue
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image as PILImage

from . import specs
from .postprocess import DetectionParams
from .preprocess import SUPPORTED_FORMATS

DEFAULT_MODEL = specs.YOLOV7.ensemble_name
PROTOCOLS = ("grpc", "http")
DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}
CONF_PARAMETER, IOU_PARAMETER, MAX_DET_PARAMETER = DetectionParams.KEYS  # the ensemble's request parameters

Item = Union[bytes, bytearray, memoryview, str, os.PathLike]


# ---------------------------------------------------------------------------------------------------- errors


class ClientError(Exception):
    """Base of every error this client raises (besides plain argument errors)."""


class ServerUnreachable(ClientError):
    """No Triton answers at the URL (wrong host or port, server down, TLS mismatch)."""


class ModelNotReady(ClientError):
    """The server is up but the model is unknown, still loading or failed to load."""


class WrongModel(ClientError):
    """The model exists but does not take encoded images (e.g. the bare detector instead of its ensemble)."""


class ClientTimeout(ClientError):
    """The request took longer than the client's ``timeout``."""


class InputError(ClientError):
    """An item could not be read on the client side (missing file, not bytes, ...)."""


class ServerError(ClientError):
    """The server refused or failed the request; ``message`` is the server's own text (e.g. INVALID_ARG
    ``cannot decode 20 bytes as an image ...``), ``status`` its code (``INVALID_ARGUMENT``, ``400``...)."""

    def __init__(self, message: str, status: Optional[str] = None):
        self.message, self.status = message, status
        super().__init__(f"server error ({status}): {message}" if status else f"server error: {message}")


def _status(error) -> str:
    status = str(error.status() or "")
    return status.replace("StatusCode.", "")


def _convert(error: BaseException, url: str, model: str) -> ClientError:
    """A tritonclient / socket exception as one of ours, the server's message kept."""
    from tritonclient.utils import InferenceServerException

    if isinstance(error, ClientError):
        return error
    if isinstance(error, InferenceServerException):
        status, message = _status(error), error.message() or str(error)
        if status == "UNAVAILABLE":
            return ServerUnreachable(f"cannot reach Triton at {url}: {message}")
        if status == "DEADLINE_EXCEEDED" or "timed out" in message.lower():
            return ClientTimeout(f"no answer from {url} within the client timeout: {message}")
        if status in ("NOT_FOUND", "404") or "unknown model" in message:
            return ModelNotReady(f"model {model!r} on {url}: {message}")
        return ServerError(message, status or None)
    if isinstance(error, TimeoutError) or type(error).__name__ == "Timeout":  # socket.timeout, gevent.Timeout
        return ClientTimeout(f"no answer from {url} within the client timeout ({error!r})")
    if isinstance(error, OSError):
        return ServerUnreachable(f"cannot reach Triton at {url}: {error}")
    return ClientError(f"{type(error).__name__}: {error}")


# ---------------------------------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Detection:
    """One box in the original image's pixels (x1, y1 top-left; x2, y2 bottom-right)."""

    class_id: int
    name: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def box(self) -> Tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def to_dict(self) -> Dict[str, Any]:
        return {"class_id": self.class_id, "name": self.name, "score": round(self.score, 5),
                "box": [round(v, 2) for v in self.box]}


@dataclasses.dataclass(frozen=True)
class ItemResult:
    """What ``Detector.stream`` yields per item: its position, the item as given, and detections or an error."""

    index: int
    item: Any
    detections: Optional[List[Detection]] = None
    error: Optional[ClientError] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_result(result) -> List[List[Detection]]:
    """The ensemble's outputs (one request of B images) → B lists of detections, padding dropped."""
    counts = result.as_numpy("num_detections").reshape(-1)
    boxes, scores = result.as_numpy("boxes"), result.as_numpy("scores")
    classes, names = result.as_numpy("classes"), result.as_numpy("class_names")
    out = []
    for i, n in enumerate(counts.tolist()):
        out.append([
            Detection(int(c), name.decode() if isinstance(name, bytes) else str(name), float(s), *map(float, box))
            for box, s, c, name in zip(boxes[i, :n], scores[i, :n], classes[i, :n], names[i, :n])
        ])
    return out


def read_item(item: Item) -> bytes:
    """Encoded bytes of an item: bytes-like as they are, a path's file contents."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (str, os.PathLike)):
        try:
            return Path(item).read_bytes()
        except OSError as error:
            raise InputError(f"cannot read {os.fspath(item)}: {error.strerror or error}") from error
    raise InputError(f"expected encoded image bytes or a file path, got {type(item).__name__}")


def image_size(data: Union[bytes, str, os.PathLike]) -> Optional[Tuple[int, int]]:
    """(width, height) of the upright image from its header only (Pillow, no decode); EXIF orientation 5–8 swaps
    the two, as the server's decode does. None if Pillow cannot read the header."""
    try:
        with PILImage.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 — a header Pillow cannot read: the size is simply unknown
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# ---------------------------------------------------------------------------------------------------- API


class Detector:
    """A connection to one ensemble on one Triton server.

    ``url`` without a scheme (``host:port``; ``http://``/``https://``/``grpc://`` prefixes are accepted, https
    meaning ``ssl=True``), default ``localhost:8001`` for gRPC and ``localhost:8000`` for HTTP. ``ssl`` with
    ``root_certificates`` (CA PEM), ``private_key`` and ``certificate_chain`` (client key and certificate PEM,
    for mutual TLS). ``timeout`` in seconds per request (HTTP: also the connection timeout; fixed when the
    client is made). ``concurrency``: default requests in flight for
    ``stream``/``detect_many`` (and the HTTP connection pool size).

    The constructor checks that the server is live and the model ready and takes encoded images, so a wrong URL
    or model fails here with ``ServerUnreachable`` / ``ModelNotReady`` / ``WrongModel`` (``check=False`` skips).
    """

    def __init__(self, url: Optional[str] = None, model: str = DEFAULT_MODEL, protocol: str = "grpc", *,
                 ssl: bool = False, root_certificates: Optional[str] = None, private_key: Optional[str] = None,
                 certificate_chain: Optional[str] = None, timeout: Optional[float] = None, concurrency: int = 4,
                 verbose: bool = False, check: bool = True):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        url = url or DEFAULT_URLS[protocol]
        for scheme in ("grpc://", "http://", "https://"):
            if url.startswith(scheme):
                ssl, url = ssl or scheme == "https://", url[len(scheme):]
        self.url, self.model, self.protocol, self.timeout, self.concurrency = url, model, protocol, timeout, concurrency
        self.ssl, self._client_certificate = ssl, bool(certificate_chain)
        self._max_batch_size: Optional[int] = None
        for name, path in (("root certificate", root_certificates), ("private key", private_key),
                           ("certificate chain", certificate_chain)):
            if path is not None and not Path(path).is_file():
                raise InputError(f"{name} file not found: {path}")
        if protocol == "grpc":
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url, verbose=verbose, ssl=ssl, root_certificates=root_certificates,
                                                        private_key=private_key, certificate_chain=certificate_chain)
        else:
            import tritonclient.http as module

            options = {k: v for k, v in (("ca_certs", root_certificates), ("keyfile", private_key),
                                         ("certfile", certificate_chain)) if v}
            self._client = module.InferenceServerClient(
                url, verbose=verbose, concurrency=concurrency, ssl=ssl, ssl_options=options or None,
                connection_timeout=timeout or 60.0, network_timeout=timeout or 300.0)
        self._module = module
        # what a failed call may raise: tritonclient's exception, socket errors, and gevent's Timeout (HTTP), which
        # is a BaseException
        self._caught: tuple = (Exception,)
        if protocol == "http":
            from gevent import Timeout

            self._caught = (Exception, Timeout)
        self._outputs = [module.InferRequestedOutput(name) for name in specs.ENSEMBLE_OUTPUTS]
        if check:
            try:
                self.check()
            except BaseException:
                self.close()
                raise

    # -- connection

    def _call(self, method: str, *args, **kwargs):
        """A tritonclient call with our exceptions; gRPC calls get the client timeout (default 30 s here)."""
        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout or 30.0)
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except self._caught as error:  # converted, never swallowed
            raise self._error(error) from error

    def _error(self, error: BaseException) -> ClientError:
        converted = _convert(error, self.url, self.model)
        # something listens there but the connection failed: most often a TLS mismatch, say which way
        if isinstance(converted, ServerUnreachable) and self.protocol == "grpc" and "refused" not in str(converted).lower():
            if not self.ssl:
                hint = "if the server uses TLS, connect with ssl=True / -s and its CA certificate / -r"
            elif "CERTIFICATE_VERIFY_FAILED" in str(converted):
                hint = "the server's certificate is not trusted: give its CA certificate (root_certificates / -r)"
            elif not self._client_certificate:
                hint = "if the server requires mutual TLS, give the client key and certificate (-p, -x)"
            else:
                hint = "check that the certificates match the server's"
            converted.args = (f"{converted.args[0]} ({hint})",)
        return converted

    def check(self) -> None:
        """Raise ``ServerUnreachable``, ``ModelNotReady`` or ``WrongModel`` unless the model can take our requests."""
        try:
            live = self._call("is_server_live")
        except ClientError as error:
            if isinstance(error, (ServerError, ModelNotReady)):  # something answered, but not a Triton health check
                raise ServerUnreachable(f"cannot reach Triton at {self.url} over {self.protocol}: {error}") from error
            raise
        if not live:
            raise ServerUnreachable(f"Triton at {self.url} answers but is not live")
        if not self._call("is_model_ready", self.model):
            ready = sorted(m["name"] for m in self.repository_index() if m.get("state") == "READY")
            raise ModelNotReady(f"model {self.model!r} is not ready on {self.url} (ready: {', '.join(ready) or 'none'})")
        inputs = self.model_metadata().get("inputs", [])
        if not any(i.get("name") == specs.ENSEMBLE_INPUT and i.get("datatype") == "BYTES" for i in inputs):
            found = ", ".join(f"{i.get('name')} {i.get('datatype')}" for i in inputs)
            ensembles = [m["name"] for m in self.repository_index() if m["name"].endswith("_e2e")]
            hint = f"{self.model}_e2e" if f"{self.model}_e2e" in ensembles else ", ".join(sorted(ensembles)) or DEFAULT_MODEL
            raise WrongModel(f"model {self.model!r} does not take encoded images (input {specs.ENSEMBLE_INPUT} BYTES); "
                             f"its inputs: {found or 'none'} — use an ensemble: {hint}")

    def _query(self, method: str, *args):
        """A server query as plain JSON-like dicts over either protocol."""
        return self._call(method, *args, **({"as_json": True} if self.protocol == "grpc" else {}))

    def repository_index(self) -> List[dict]:
        index = self._query("get_model_repository_index")
        return index.get("models", []) if isinstance(index, dict) else list(index)

    def model_metadata(self) -> dict:
        return self._query("get_model_metadata", self.model)

    def model_config(self) -> dict:
        config = self._query("get_model_config", self.model)
        return config.get("config", config)  # gRPC wraps it in {"config": ...}

    def statistics(self) -> dict:
        """The server's inference statistics of this model (counts and cumulative times per stage)."""
        return self._query("get_inference_statistics", self.model)

    @property
    def max_batch_size(self) -> int:
        """Images one request may hold (the ensemble config's ``max_batch_size``)."""
        if self._max_batch_size is None:
            self._max_batch_size = max(1, int(self.model_config().get("max_batch_size", 1)))
        return self._max_batch_size

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests

    @staticmethod
    def parameters(conf: Optional[float] = None, iou: Optional[float] = None, max_det: Optional[int] = None) -> Optional[dict]:
        """Triton request parameters overriding the postprocess config defaults (None: keep the default)."""
        values = {CONF_PARAMETER: conf, IOU_PARAMETER: iou, MAX_DET_PARAMETER: max_det}
        return {k: v for k, v in values.items() if v is not None} or None

    def _inputs(self, payloads: Sequence[bytes]):
        tensor = self._module.InferInput(specs.ENSEMBLE_INPUT, [len(payloads), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[p] for p in payloads], dtype=np.object_).reshape(len(payloads), 1))
        return [tensor]

    def _infer(self, payloads: Sequence[bytes], parameters: Optional[dict]) -> List[List[Detection]]:
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            result = self._client.infer(self.model, self._inputs(payloads), outputs=self._outputs,
                                        parameters=parameters, **kwargs)
        except self._caught as error:
            raise self._error(error) from error
        return parse_result(result)

    def detect(self, item: Item, conf: Optional[float] = None, iou: Optional[float] = None,
               max_det: Optional[int] = None) -> List[Detection]:
        """Detections of one image (encoded bytes or a file path), sorted by score."""
        return self._infer([read_item(item)], self.parameters(conf, iou, max_det))[0]

    def detect_batch(self, items: Sequence[Item], conf: Optional[float] = None, iou: Optional[float] = None,
                     max_det: Optional[int] = None) -> List[List[Detection]]:
        """Several images per request (``[B, 1]``, split at the model's max batch size); one list per item. A bad
        image fails its whole request: the server's message names the element (``IMAGE[i]: ...``)."""
        items = list(items)
        parameters, size, out = self.parameters(conf, iou, max_det), self.max_batch_size, []
        for start in range(0, len(items), size):
            out += self._infer([read_item(i) for i in items[start:start + size]], parameters)
        return out

    def detect_many(self, items: Iterable[Item], *, concurrency: Optional[int] = None, batch_size: int = 1,
                    conf: Optional[float] = None, iou: Optional[float] = None, max_det: Optional[int] = None,
                    return_exceptions: bool = False) -> List[Union[List[Detection], ClientError]]:
        """Many images with ``concurrency`` async requests in flight; results in input order. The first failed
        item's error is raised, or with ``return_exceptions`` it takes the item's place in the list."""
        results = sorted(self.stream(items, concurrency=concurrency, batch_size=batch_size, conf=conf, iou=iou,
                                     max_det=max_det), key=lambda r: r.index)
        if not return_exceptions:
            for result in results:
                if result.error is not None:
                    raise result.error
        return [r.detections if r.ok else r.error for r in results]

    def stream(self, items: Iterable[Item], *, concurrency: Optional[int] = None, batch_size: int = 1,
               conf: Optional[float] = None, iou: Optional[float] = None,
               max_det: Optional[int] = None) -> Iterator[ItemResult]:
        """Yield an ``ItemResult`` per item as its request completes (not in input order; ``index`` says which).

        Items are read lazily, so a generator of millions of paths or frames is fine: at most ``concurrency``
        requests of ``batch_size`` images are in flight. A failed item never stops the others: a batch refused
        by the server is retried image by image, so only the bad image gets the error."""
        concurrency = concurrency or self.concurrency
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        if batch_size > 1 and batch_size > self.max_batch_size:
            raise ValueError(f"batch_size {batch_size} is above model {self.model!r}'s max batch size {self.max_batch_size}")
        parameters = self.parameters(conf, iou, max_det)
        pending = _GrpcPending(self) if self.protocol == "grpc" else _HttpPending(self)
        source, retry, exhausted = enumerate(items), collections.deque(), False
        while True:
            while len(pending) < concurrency and (retry or not exhausted):
                if retry:
                    chunk = [retry.popleft()]
                else:
                    chunk, taken = [], 0
                    for index, item in itertools.islice(source, batch_size):
                        taken += 1
                        try:
                            chunk.append((index, item, read_item(item)))
                        except InputError as error:
                            yield ItemResult(index, item, error=error)
                    exhausted = taken < batch_size
                    if not chunk:
                        continue
                pending.submit(chunk, parameters)
            if not len(pending):
                return
            chunk, outcome = pending.wait()
            if isinstance(outcome, ServerError) and len(chunk) > 1:
                retry.extend(chunk)  # find the bad image(s): the others still get their boxes
            elif isinstance(outcome, ClientError):
                for index, item, _ in chunk:
                    yield ItemResult(index, item, error=outcome)
            else:
                for (index, item, _), detections in zip(chunk, outcome):
                    yield ItemResult(index, item, detections=detections)


class _GrpcPending:
    """In-flight gRPC requests: ``async_infer`` callbacks (gRPC threads) put the outcomes on a queue."""

    def __init__(self, detector: Detector):
        self.detector, self.done, self.count = detector, queue.Queue(), 0

    def __len__(self) -> int:
        return self.count

    def submit(self, chunk, parameters) -> None:
        d = self.detector

        def callback(result, error, chunk=chunk):
            try:
                self.done.put((chunk, d._error(error) if error is not None else parse_result(result)))
            except Exception as failure:  # noqa: BLE001 — a bad response must not lose the item
                self.done.put((chunk, ClientError(f"cannot read the response: {failure}")))

        try:
            d._client.async_infer(d.model, d._inputs([p for _, _, p in chunk]), callback, outputs=d._outputs,
                                  client_timeout=d.timeout, parameters=parameters)
        except Exception as error:  # noqa: BLE001
            self.done.put((chunk, d._error(error)))
        self.count += 1

    def wait(self):
        self.count -= 1
        return self.done.get()


class _HttpPending:
    """In-flight HTTP requests: the client's greenlet pool runs them; we collect the oldest first."""

    def __init__(self, detector: Detector):
        self.detector, self.requests = detector, collections.deque()

    def __len__(self) -> int:
        return len(self.requests)

    def submit(self, chunk, parameters) -> None:
        d = self.detector
        try:
            request = d._client.async_infer(d.model, d._inputs([p for _, _, p in chunk]), outputs=d._outputs,
                                            parameters=parameters)
        except self.detector._caught as error:
            request = d._error(error)
        self.requests.append((chunk, request))

    def wait(self):
        chunk, request = self.requests.popleft()
        if isinstance(request, ClientError):
            return chunk, request
        try:
            return chunk, parse_result(request.get_result())
        except self.detector._caught as error:
            return chunk, self.detector._error(error)


# ---------------------------------------------------------------------------------------------------- drawing


def class_color(class_id: int) -> Tuple[int, int, int]:
    """A stable, distinct BGR colour per class (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """Boxes and ``name score`` labels drawn on a BGR image (in place; returned for chaining)."""
    import cv2

    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    scale = max(0.4, min(height, width) / 1000)
    for d in detections:
        color = class_color(d.class_id)
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        label = f"{d.name} {d.score:.2f}"
        (tw, th), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = y1 - th - baseline if y1 - th - baseline >= 0 else y1  # above the box, or inside it at the top edge
        cv2.rectangle(image, (x1, top), (x1 + tw, top + th + baseline), color, cv2.FILLED)
        cv2.putText(image, label, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def dummy_image(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A generated JPEG (gradient, shapes, noise) to check the whole pipeline without a photo."""
    import cv2

    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    image = np.dstack([x, y, 255 - x]).astype(np.uint8)
    for _ in range(6):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(image, center, int(rng.integers(20, height // 4)), [int(c) for c in rng.integers(0, 256, 3)], -1)
    image = cv2.add(image, rng.integers(0, 30, image.shape, dtype=np.uint8))
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buffer.tobytes()


# ---------------------------------------------------------------------------------------------------- command line

IMAGE_SUFFIXES = frozenset(ext for ext, fmt in PILImage.registered_extensions().items() if fmt in SUPPORTED_FORMATS)
VIDEO_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v"}
DUMMY_NAME = "<dummy>"

DESCRIPTION = """Send images (or a video's frames, or a generated dummy image) to a YOLO ensemble on
Triton and print the detections. The client sends the encoded bytes: the server decodes,
letterboxes, detects, runs NMS and maps the boxes back to the original pixels."""

EPILOG = """modes:
  dummy   a generated 640x480 JPEG: checks the whole pipeline without a photo
  image   files and/or directories (searched recursively for {exts});
          sent as they are
  video   one video file (anything OpenCV reads); each frame is encoded as JPEG and sent

examples:
  %(prog)s image photo.jpg
  %(prog)s image a.jpg b.png --protocol http --conf 0.4 --iou 0.5 --json
  %(prog)s image photos/ --concurrency 8 --batch 4 -o annotated/
  %(prog)s video clip.mp4 -o clip_boxes.mp4 -f 25
  %(prog)s dummy -i
  %(prog)s image photo.jpg -u triton:8001 -s -r ca.pem -p client.key -x client.pem

exit status: 0 all answered; 1 a file, a frame or the connection failed (each failure on
stderr, the others still printed); 2 bad arguments."""


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    exts = " ".join(sorted(IMAGE_SUFFIXES))
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG.format(exts=exts),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["dummy", "image", "video"], help="what to send (see below)")
    parser.add_argument("inputs", nargs="*", help="image files or directories (image), one video file (video)")
    group = parser.add_argument_group("server")
    group.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"ensemble to call (default {DEFAULT_MODEL})")
    group.add_argument("-u", "--url", help="host:port (default localhost:8001 for grpc, localhost:8000 for http)")
    group.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default grpc")
    group.add_argument("-t", "--client-timeout", type=float, metavar="SECONDS", help="per-request timeout")
    group.add_argument("-i", "--model-info", action="store_true",
                       help="print the model's metadata and config first, its inference statistics last")
    group.add_argument("-v", "--verbose", action="store_true", help="tritonclient's verbose request/response log")
    group = parser.add_argument_group("TLS (gRPC; HTTP over https needs a TLS proxy in front of Triton)")
    group.add_argument("-s", "--ssl", action="store_true", help="connect with TLS")
    group.add_argument("-r", "--root-certificates", metavar="PEM", help="CA certificate(s) to trust")
    group.add_argument("-p", "--private-key", metavar="PEM", help="client private key (mutual TLS)")
    group.add_argument("-x", "--certificate-chain", metavar="PEM", help="client certificate chain (mutual TLS)")
    group = parser.add_argument_group("detection (Triton request parameters; default: the model config's)")
    group.add_argument("--conf", type=float, metavar="T", help=f"confidence threshold ({CONF_PARAMETER})")
    group.add_argument("--iou", type=float, metavar="T", help=f"NMS IoU threshold ({IOU_PARAMETER})")
    group.add_argument("--max-det", type=int, metavar="N", help=f"most boxes per image ({MAX_DET_PARAMETER})")
    group = parser.add_argument_group("throughput")
    group.add_argument("--concurrency", type=int, default=4, metavar="N", help="requests in flight (default 4)")
    group.add_argument("--batch", type=int, default=1, metavar="N",
                       help="images per request (default 1; at most the model's max batch size)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar on stderr (default: when stderr is a terminal and there is more than one item)")
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true",
                       help="one JSON object per image or frame: file, (frame,) width, height, detections")
    group.add_argument("-o", "--output", metavar="PATH",
                       help="annotated copy: a file for one image or the video (.mp4 mp4v, .avi MJPG), "
                            "a directory for several images")
    group.add_argument("-f", "--fps", type=float, help="frame rate of the output video (default: the input's, else 24)")
    return parser


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    if args.mode == "dummy" and args.inputs:
        parser.error("dummy mode takes no inputs")
    if args.mode == "image" and not args.inputs:
        parser.error("image mode needs at least one file or directory")
    if args.mode == "video" and len(args.inputs) != 1:
        parser.error("video mode takes exactly one video file")
    if (args.root_certificates or args.private_key or args.certificate_chain) and not args.ssl:
        parser.error("-r/-p/-x are TLS files: add -s")
    if bool(args.private_key) != bool(args.certificate_chain):
        parser.error("mutual TLS needs both -p (private key) and -x (certificate chain)")
    if args.concurrency < 1 or args.batch < 1:
        parser.error("--concurrency and --batch must be at least 1")
    if args.fps is not None and args.fps <= 0:
        parser.error("-f/--fps must be positive")


def expand_inputs(inputs: Sequence[str]) -> List[Path]:
    """Files as given (whatever their name: the server says if one is not an image); directories → the image
    files under them, sorted."""
    paths: List[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(path)
    return paths


def output_paths(paths: Sequence[Path], output: Optional[str]) -> Dict[int, Path]:
    """Where each annotated image goes: ``output`` itself for one image (unless it is a directory), else
    ``output/<name>``, made unique when two inputs share a name."""
    if not output:
        return {}
    target = Path(output)
    if len(paths) == 1 and not target.is_dir() and not output.endswith(os.sep):
        return {0: target}
    taken, out = set(), {}
    for index, path in enumerate(paths):
        candidate, n = target / path.name, 1
        while candidate in taken:
            candidate, n = target / f"{path.stem}_{n}{path.suffix}", n + 1
        taken.add(candidate)
        out[index] = candidate
    return out


def format_text(label: str, detections: Sequence[Detection]) -> str:
    lines = [f"{label}: {len(detections)} detections"]
    lines += [f"  {d.class_id:>3} {d.name:<15} {d.score:.3f}  x1={d.x1:.1f} y1={d.y1:.1f} x2={d.x2:.1f} y2={d.y2:.1f}"
              for d in detections]
    return "\n".join(lines)


def format_json(label: str, size: Optional[Tuple[int, int]], detections: Sequence[Detection], **extra) -> str:
    width, height = size or (None, None)
    record = {"file": label, **extra, "width": width, "height": height, "detections": [d.to_dict() for d in detections]}
    return json.dumps(record)


class _Printer:
    """Prints results in input order while requests complete in any order, with an optional tqdm bar."""

    def __init__(self, total: Optional[int], enabled: Optional[bool], unit: str):
        from tqdm import tqdm

        show = enabled if enabled is not None else (sys.stderr.isatty() and (total is None or total > 1))
        self.bar = tqdm(total=total, unit=unit, file=sys.stderr, disable=not show, dynamic_ncols=True)
        self.waiting: Dict[int, ItemResult] = {}
        self.next = 0
        self.failed = 0

    def out(self, text: str, error: bool = False) -> None:
        self.bar.write(text, file=sys.stderr if error else sys.stdout)

    def ordered(self, results: Iterable[ItemResult]) -> Iterator[ItemResult]:
        for result in results:
            self.bar.update(1)
            self.waiting[result.index] = result
            while self.next in self.waiting:
                yield self.waiting.pop(self.next)
                self.next += 1

    def close(self) -> None:
        self.bar.close()


def _report_error(printer: _Printer, label: str, error: ClientError, as_json: bool, **extra) -> None:
    printer.failed += 1
    printer.out(f"{label}: error: {error}", error=True)
    if as_json:
        printer.out(json.dumps({"file": label, **extra, "error": str(error)}))


def _annotate_to(path: Path, data: bytes, detections: Sequence[Detection]) -> None:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError("cannot decode the image to draw on it")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok = cv2.imwrite(str(path), draw_detections(image, detections))
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"cannot write the annotated image {path} (use a .jpg, .png, .bmp or .webp name)")


def run_images(detector: Detector, args, items: Sequence[Union[Path, bytes]], labels: Sequence[str]) -> int:
    outputs = output_paths([Path(l) for l in labels], args.output)
    printer = _Printer(len(items), args.progress, "img")
    stream = detector.stream([str(i) if isinstance(i, Path) else i for i in items], concurrency=args.concurrency,
                             batch_size=args.batch, conf=args.conf, iou=args.iou, max_det=args.max_det)
    try:
        for result in printer.ordered(stream):
            label = labels[result.index]
            if not result.ok:
                _report_error(printer, label, result.error, args.json)
                continue
            item = items[result.index]
            printer.out(format_json(label, image_size(item), result.detections) if args.json
                        else format_text(label, result.detections))
            if result.index in outputs:
                try:
                    _annotate_to(outputs[result.index], read_item(item), result.detections)
                except InputError as error:
                    _report_error(printer, label, error, False)
    finally:
        printer.close()
    return 1 if printer.failed else 0


def run_video(detector: Detector, args) -> int:
    import cv2

    source = args.inputs[0]
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        print(f"{source}: error: cannot open the video", file=sys.stderr)
        return 1
    fps = args.fps or capture.get(cv2.CAP_PROP_FPS) or 24.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    frames: Dict[int, np.ndarray] = {}  # frames in flight, kept for drawing; at most concurrency × batch + reordering

    def encoded():
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            frames[index] = frame
            index += 1
            ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            yield buffer.tobytes()  # the client's one re-encode: the server takes encoded images only

    writer = None
    printer = _Printer(count, args.progress, "frame")
    try:
        stream = detector.stream(encoded(), concurrency=args.concurrency, batch_size=args.batch, conf=args.conf,
                                 iou=args.iou, max_det=args.max_det)
        for result in printer.ordered(stream):
            frame = frames.pop(result.index)
            height, width = frame.shape[:2]
            if not result.ok:
                _report_error(printer, f"{source}#{result.index}", result.error, args.json)
            elif args.json:
                printer.out(format_json(source, (width, height), result.detections, frame=result.index))
            else:
                printer.out(format_text(f"{source} frame {result.index}", result.detections))
            if args.output:
                if writer is None:
                    fourcc = VIDEO_FOURCC.get(Path(args.output).suffix.lower(), "mp4v")
                    writer = cv2.VideoWriter(args.output, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
                    if not writer.isOpened():
                        printer.out(f"{args.output}: error: OpenCV cannot write this video ({fourcc}); "
                                    "try .avi (MJPG) or .mp4 (mp4v)", error=True)
                        return 1
                writer.write(draw_detections(frame, result.detections or []))
    finally:
        printer.close()
        capture.release()
        if writer is not None:
            writer.release()
    if printer.next == 0:
        print(f"{source}: error: no frame could be read", file=sys.stderr)
        return 1
    return 1 if printer.failed else 0


def _print_json_block(title: str, value: dict, as_json: bool) -> None:
    print(json.dumps({title: value}) if as_json else f"{title}:\n{json.dumps(value, indent=2)}")


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    try:
        return _main(argv, prog)
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: Optional[Sequence[str]], prog: Optional[str]) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's own handshake logs: our error message says it once
    parser = build_parser(prog)
    args = parser.parse_intermixed_args(argv)  # files may come before and after flags
    _check_args(parser, args)
    try:
        detector = Detector(args.url, args.model, args.protocol, ssl=args.ssl, root_certificates=args.root_certificates,
                            private_key=args.private_key, certificate_chain=args.certificate_chain,
                            timeout=args.client_timeout, concurrency=args.concurrency, verbose=args.verbose)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    with detector:
        try:
            if args.batch > 1 and args.batch > detector.max_batch_size:
                print(f"error: --batch {args.batch} is above {args.model}'s max batch size {detector.max_batch_size}",
                      file=sys.stderr)
                return 2
            if args.model_info:
                _print_json_block("model metadata", detector.model_metadata(), args.json)
                _print_json_block("model config", detector.model_config(), args.json)
            if args.mode == "dummy":
                status = run_images(detector, args, [dummy_image()], [DUMMY_NAME])
            elif args.mode == "image":
                paths = expand_inputs(args.inputs)
                if not paths:
                    print(f"error: no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) in {' '.join(args.inputs)}",
                          file=sys.stderr)
                    return 1
                status = run_images(detector, args, paths, [str(p) for p in paths])
            else:
                status = run_video(detector, args)
            if args.model_info:
                _print_json_block("inference statistics", detector.statistics(), args.json)
        except ClientError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
