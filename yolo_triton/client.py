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
import heapq
import io
import itertools
import json
import os
import queue
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

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


class BackendUnhealthy(ServerError):
    """A model instance's backend process is gone (a Python backend stub killed or crashed): Triton answers
    ``INTERNAL ... Stub process '<model>_0_0' is not healthy.`` for the requests it routes to that instance.
    Triton 2.51 does not restart the stub and keeps the model READY: other instances (or servers) still answer,
    so the client retries it like a transient failure."""


class DeadlineExceeded(ClientTimeout):
    """The retry policy's deadline passed before a request succeeded; ``attempts``, ``elapsed`` (seconds) and
    ``last_error`` (the last transient failure) say what happened."""

    def __init__(self, message: str, attempts: int, elapsed: float, last_error: ClientError):
        super().__init__(message)
        self.attempts, self.elapsed, self.last_error = attempts, elapsed, last_error


TRANSIENT = (ServerUnreachable, ModelNotReady, BackendUnhealthy)  # retried; everything else fails at once


def is_transient(error: BaseException) -> bool:
    """Worth retrying (later, or on another server): no server there (refused, UNAVAILABLE, restarting), model not
    (yet) loaded, a dead backend instance. Never a bad input (INVALID_ARG), a client timeout or a local error."""
    return isinstance(error, TRANSIENT)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a request that failed transiently (``is_transient``) is retried: at most ``attempts`` tries in all (None:
    as many as the deadline allows), waiting ``initial_backoff`` seconds after the first failure, ``multiplier``
    times more after each next one, at most ``max_backoff``, each wait shortened by a random share up to
    ``jitter`` (0–1, so clients do not retry in step); no try starts later than ``deadline`` seconds after the
    first (None: no deadline). A retry goes to another healthy server at once when there is one. Giving up raises
    the last error (its message says how many attempts over how long) or, when the deadline is what stopped it,
    ``DeadlineExceeded``. ``RetryPolicy.disabled()``: one try, as a client without retries."""

    attempts: Optional[int] = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    deadline: Optional[float] = 30.0

    def __post_init__(self):
        if self.attempts is None and self.deadline is None:
            raise ValueError("a retry policy needs attempts or a deadline (or both)")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if min(self.initial_backoff, self.max_backoff) < 0 or self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("backoffs must be >= 0, multiplier >= 1 and jitter in [0, 1]")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError(f"deadline must be positive, got {self.deadline}")

    @classmethod
    def disabled(cls) -> "RetryPolicy":
        return cls(attempts=1, deadline=None)

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed try (exponential, capped, jittered)."""
        wait = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(0, failures - 1))
        return wait * (1.0 - self.jitter * random.random())

    def decide(self, error: ClientError, failures: int, started: float, wait: float) -> Union[float, ClientError]:
        """After ``failures`` failed tries since ``started`` (monotonic): the seconds to wait before the next try,
        or the error to give up with."""
        if not is_transient(error):
            return error
        elapsed = time.monotonic() - started
        if self.attempts is not None and failures >= self.attempts:
            if self.attempts > 1:
                error.args = (f"{error.args[0] if error.args else error} (gave up after {failures} attempts over "
                              f"{elapsed:.1f} s)",) + error.args[1:]
            return error
        if self.deadline is not None and elapsed + wait >= self.deadline:
            return DeadlineExceeded(f"no success within the {self.deadline:g} s retry deadline: {failures} attempts over "
                                    f"{elapsed:.1f} s; last error: {error}", failures, elapsed, error)
        return wait


DEFAULT_RETRY = RetryPolicy()


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
        if "is restricted" in message:  # the production profile's admin APIs, without the admin key: not transient
            return ServerError(f"{message} (an admin API of the production profile: send the admin key, see "
                               "yolo_triton.security.admin_headers)", status or None)
        if status == "UNAVAILABLE":
            return ServerUnreachable(f"cannot reach Triton at {url}: {message}")
        if status == "DEADLINE_EXCEEDED" or "timed out" in message.lower():
            return ClientTimeout(f"no answer from {url} within the client timeout: {message}")
        if status in ("NOT_FOUND", "404") or "unknown model" in message:
            return ModelNotReady(f"model {model!r} on {url}: {message}")
        if "Stub process" in message and "is not healthy" in message:
            return BackendUnhealthy(message, status or None)
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


def split_urls(urls: Union[None, str, Sequence[str]]) -> List[str]:
    """Server URLs from a list or a comma-separated string, blanks dropped."""
    if urls is None:
        return []
    parts = urls.split(",") if isinstance(urls, str) else [p for u in urls for p in str(u).split(",")]
    return [p.strip() for p in parts if p.strip()]



class _Endpoint:
    """One server of a Detector: its tritonclient client, health and counts."""

    def __init__(self, url: str, client):
        self.url, self.client = url, client
        self.healthy, self.retry_at = True, 0.0  # unhealthy: skipped until retry_at, then health-checked
        self.sent = self.failed = 0  # inference requests sent to it / failed transiently on it


class Detector:
    """A connection to one ensemble on one Triton server, or on several, load-balanced.

    ``url`` without a scheme (``host:port``; ``http://``/``https://``/``grpc://`` prefixes are accepted, https
    meaning ``ssl=True``), default ``localhost:8001`` for gRPC and ``localhost:8000`` for HTTP. Several servers:
    a list of URLs or one comma-separated string; requests go round robin over the healthy ones (one tritonclient
    client each). A server that fails transiently (unreachable, model not ready) is marked unhealthy and skipped;
    after ``cooldown`` seconds it is health-checked (server and model ready) and used again if it passes; the
    failed request is retried on another server at once. ``requests_sent`` / ``servers()`` show the spread.

    ``retry``: a ``RetryPolicy`` for transient failures (default ``DEFAULT_RETRY``: 4 tries, backoff 0.1 s doubling
    up to 2 s, deadline 30 s; ``None`` or ``RetryPolicy.disabled()``: no retries). Input errors (``INVALID_ARG``,
    a bad image) are never retried. ``ssl`` with ``root_certificates`` (CA PEM), ``private_key`` and
    ``certificate_chain`` (client key and certificate PEM, for mutual TLS). ``timeout`` in seconds per request
    (HTTP: also the connection timeout; fixed when the client is made). ``concurrency``: default requests in
    flight for ``stream``/``detect_many`` (and the HTTP connection pool size).

    The constructor checks that the server is live and the model ready and takes encoded images, so a wrong URL
    or model fails here with ``ServerUnreachable`` / ``ModelNotReady`` / ``WrongModel`` (``check=False`` skips);
    with several URLs one server passing is enough (the others start unhealthy), ``WrongModel`` anywhere fails.
    """

    def __init__(self, url: Union[None, str, Sequence[str]] = None, model: str = DEFAULT_MODEL, protocol: str = "grpc", *,
                 ssl: bool = False, root_certificates: Optional[str] = None, private_key: Optional[str] = None,
                 certificate_chain: Optional[str] = None, timeout: Optional[float] = None, concurrency: int = 4,
                 verbose: bool = False, check: bool = True, retry: Optional[RetryPolicy] = DEFAULT_RETRY,
                 cooldown: float = 2.0):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if cooldown < 0:
            raise ValueError(f"cooldown must be >= 0, got {cooldown}")
        urls = split_urls(url) or [DEFAULT_URLS[protocol]]
        for i, one in enumerate(urls):
            for scheme in ("grpc://", "http://", "https://"):
                if one.startswith(scheme):
                    ssl, urls[i] = ssl or scheme == "https://", one[len(scheme):]
        if len(set(urls)) != len(urls):
            raise ValueError(f"the same server twice in {', '.join(urls)}")
        self.urls, self.model, self.protocol, self.timeout, self.concurrency = urls, model, protocol, timeout, concurrency
        self.url = urls[0]
        self.retry, self.cooldown = retry or RetryPolicy.disabled(), cooldown
        self.ssl, self._client_certificate = ssl, bool(certificate_chain)
        self._max_batch_size: Optional[int] = None
        self._lock, self._next = threading.Lock(), 0
        for name, path in (("root certificate", root_certificates), ("private key", private_key),
                           ("certificate chain", certificate_chain)):
            if path is not None and not Path(path).is_file():
                raise InputError(f"{name} file not found: {path}")
        if protocol == "grpc":
            import tritonclient.grpc as module

            keepalive = module.KeepAliveOptions()
            # tritonclient's own channel options, plus a short reconnect backoff: after a server restart the channel
            # reconnects within a second, not after gRPC's default (up to 120 s once it has failed for a while)
            channel_args = [
                ("grpc.max_send_message_length", module.MAX_GRPC_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", module.MAX_GRPC_MESSAGE_SIZE),
                ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ]

            def make(one):
                return module.InferenceServerClient(one, verbose=verbose, ssl=ssl, root_certificates=root_certificates,
                                                    private_key=private_key, certificate_chain=certificate_chain,
                                                    channel_args=channel_args)
        else:
            import tritonclient.http as module

            options = {k: v for k, v in (("ca_certs", root_certificates), ("keyfile", private_key),
                                         ("certfile", certificate_chain)) if v}

            def make(one):
                return module.InferenceServerClient(
                    one, verbose=verbose, concurrency=concurrency, ssl=ssl, ssl_options=options or None,
                    connection_timeout=timeout or 60.0, network_timeout=timeout or 300.0)
        self._endpoints: List[_Endpoint] = []
        self._module = module
        # what a failed call may raise: tritonclient's exception, socket errors, and gevent's Timeout (HTTP), which
        # is a BaseException
        self._caught: tuple = (Exception,)
        if protocol == "http":
            from gevent import Timeout

            self._caught = (Exception, Timeout)
        self._outputs = [module.InferRequestedOutput(name) for name in specs.ENSEMBLE_OUTPUTS]
        try:
            self._endpoints = [_Endpoint(one, make(one)) for one in urls]
            if check:
                self.check()
        except BaseException:
            self.close()
            raise

    # -- servers

    @property
    def requests_sent(self) -> Dict[str, int]:
        """Inference requests sent per server URL (retries included)."""
        return {e.url: e.sent for e in self._endpoints}

    def servers(self) -> List[Dict[str, Any]]:
        """Per server: url, healthy, sent (inference requests), failed (transient failures seen there)."""
        return [{"url": e.url, "healthy": e.healthy, "sent": e.sent, "failed": e.failed} for e in self._endpoints]

    def _mark_down(self, endpoint: _Endpoint, error: ClientError) -> None:
        endpoint.failed += 1
        if isinstance(error, (ServerUnreachable, ModelNotReady)):  # a dead backend instance: the server still answers
            endpoint.healthy, endpoint.retry_at = False, time.monotonic() + self.cooldown

    def _healthy(self, endpoint: _Endpoint) -> bool:
        """Server and model ready (a short health check, no retries)."""
        kwargs = {"client_timeout": min(self.timeout or 2.0, 2.0)} if self.protocol == "grpc" else {}
        try:
            return bool(endpoint.client.is_server_ready(**kwargs) and endpoint.client.is_model_ready(self.model, **kwargs))
        except self._caught:
            return False

    def _pick(self, avoid: Optional[_Endpoint] = None) -> _Endpoint:
        """The next healthy server round robin (not ``avoid`` if another is healthy); unhealthy ones whose cool-down
        is over are health-checked first. None healthy: the one that was due back first (the request probes it)."""
        now = time.monotonic()
        for endpoint in self._endpoints:
            if not endpoint.healthy and now >= endpoint.retry_at:
                if self._healthy(endpoint):
                    endpoint.healthy = True
                else:
                    endpoint.retry_at = time.monotonic() + self.cooldown
        healthy = [e for e in self._endpoints if e.healthy]
        pool = [e for e in healthy if e is not avoid] or healthy
        if not pool:
            others = [e for e in self._endpoints if e is not avoid] or self._endpoints
            return min(others, key=lambda e: e.retry_at)
        with self._lock:
            count = len(self._endpoints)
            for step in range(count):
                endpoint = self._endpoints[(self._next + step) % count]
                if endpoint in pool:
                    self._next = (self._next + step + 1) % count
                    return endpoint
        return pool[0]

    def _decide(self, endpoint: _Endpoint, error: ClientError, failures: int, started: float) -> Union[float, ClientError]:
        """After a failed try on ``endpoint``: seconds to wait before the next try, or the error to give up with.
        No wait when another healthy server can take the retry."""
        if not is_transient(error):
            return error
        self._mark_down(endpoint, error)
        elsewhere = any(e.healthy and e is not endpoint for e in self._endpoints)
        return self.retry.decide(error, failures, started, 0.0 if elsewhere else self.retry.backoff(failures))

    def _retrying(self, operation: Callable[[_Endpoint], Any]) -> Any:
        """``operation(endpoint)`` under the retry policy, failing over between servers."""
        started, failures, avoid = time.monotonic(), 0, None
        while True:
            endpoint = self._pick(avoid)
            try:
                result = operation(endpoint)
            except ClientError as error:
                failures += 1
                decision = self._decide(endpoint, error, failures, started)
                if isinstance(decision, ClientError):
                    if decision is error:
                        raise
                    raise decision from error
                time.sleep(decision)
                avoid = endpoint
                continue
            endpoint.healthy = True
            return result

    # -- connection

    def _call(self, method: str, *args, endpoint: Optional[_Endpoint] = None, **kwargs):
        """A tritonclient call with our exceptions, on ``endpoint`` (else any server, under the retry policy); gRPC
        calls get the client timeout (default 30 s here)."""
        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout or 30.0)
        if endpoint is None:
            return self._retrying(lambda one: self._call(method, *args, endpoint=one, **kwargs))
        try:
            return getattr(endpoint.client, method)(*args, **kwargs)
        except self._caught as error:  # converted, never swallowed
            raise self._error(error, endpoint.url) from error

    def _error(self, error: BaseException, url: Optional[str] = None) -> ClientError:
        converted = _convert(error, url or self.url, self.model)
        # something listens there but the connection failed: most often a TLS mismatch, say which way
        text = str(converted).lower()
        answered = "server is stopping" in text or "request id" in text  # Triton itself said it, not a handshake
        if isinstance(converted, ServerUnreachable) and self.protocol == "grpc" and "refused" not in text and not answered:
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
        """Raise ``ServerUnreachable``, ``ModelNotReady`` or ``WrongModel`` unless the model can take our requests
        (on at least one server; the servers that fail start unhealthy)."""
        failures: List[ClientError] = []
        for endpoint in self._endpoints:
            try:
                self._check_endpoint(endpoint)
                endpoint.healthy = True
            except WrongModel:
                raise
            except ClientError as error:
                if len(self._endpoints) == 1:
                    raise
                failures.append(error)
                endpoint.healthy, endpoint.retry_at = False, time.monotonic() + self.cooldown
        if len(failures) == len(self._endpoints):
            raise type(failures[0])("; ".join(str(f) for f in failures)) from failures[0]

    def _check_endpoint(self, endpoint: _Endpoint) -> None:
        url = endpoint.url
        try:
            live = self._call("is_server_live", endpoint=endpoint)
        except ClientError as error:
            if isinstance(error, (ServerError, ModelNotReady)):  # something answered, but not a Triton health check
                raise ServerUnreachable(f"cannot reach Triton at {url} over {self.protocol}: {error}") from error
            raise
        if not live:
            raise ServerUnreachable(f"Triton at {url} answers but is not live")
        if not self._call("is_model_ready", self.model, endpoint=endpoint):
            ready = sorted(m["name"] for m in self.repository_index(endpoint) if m.get("state") == "READY")
            raise ModelNotReady(f"model {self.model!r} is not ready on {url} (ready: {', '.join(ready) or 'none'})")
        inputs = self._query("get_model_metadata", self.model, endpoint=endpoint).get("inputs", [])
        if not any(i.get("name") == specs.ENSEMBLE_INPUT and i.get("datatype") == "BYTES" for i in inputs):
            found = ", ".join(f"{i.get('name')} {i.get('datatype')}" for i in inputs)
            ensembles = [m["name"] for m in self.repository_index(endpoint) if m["name"].endswith("_e2e")]
            hint = f"{self.model}_e2e" if f"{self.model}_e2e" in ensembles else ", ".join(sorted(ensembles)) or DEFAULT_MODEL
            raise WrongModel(f"model {self.model!r} does not take encoded images (input {specs.ENSEMBLE_INPUT} BYTES); "
                             f"its inputs: {found or 'none'} — use an ensemble: {hint}")

    def _query(self, method: str, *args, endpoint: Optional[_Endpoint] = None):
        """A server query as plain JSON-like dicts over either protocol."""
        return self._call(method, *args, endpoint=endpoint, **({"as_json": True} if self.protocol == "grpc" else {}))

    def repository_index(self, endpoint: Optional[_Endpoint] = None) -> List[dict]:
        index = self._query("get_model_repository_index", endpoint=endpoint)
        return index.get("models", []) if isinstance(index, dict) else list(index)

    def model_metadata(self) -> dict:
        return self._query("get_model_metadata", self.model)

    def model_config(self) -> dict:
        config = self._query("get_model_config", self.model)
        return config.get("config", config)  # gRPC wraps it in {"config": ...}

    def statistics(self) -> dict:
        """The server's inference statistics of this model (counts and cumulative times per stage; with several
        servers, those of the one asked)."""
        return self._query("get_inference_statistics", self.model)

    @property
    def max_batch_size(self) -> int:
        """Images one request may hold (the ensemble config's ``max_batch_size``)."""
        if self._max_batch_size is None:
            self._max_batch_size = max(1, int(self.model_config().get("max_batch_size", 1)))
        return self._max_batch_size

    def close(self) -> None:
        endpoints, self._endpoints = getattr(self, "_endpoints", []), []
        for endpoint in endpoints:
            endpoint.client.close()

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

        def once(endpoint: _Endpoint):
            endpoint.sent += 1
            try:
                result = endpoint.client.infer(self.model, self._inputs(payloads), outputs=self._outputs,
                                               parameters=parameters, **kwargs)
            except self._caught as error:
                raise self._error(error, endpoint.url) from error
            return parse_result(result)

        return self._retrying(once)

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
        requests of ``batch_size`` images are in flight or waiting to be retried. A failed item never stops the
        others: a batch refused by the server is retried image by image, so only the bad image gets the error; a
        request that failed transiently is resubmitted (to another server if one is healthy) after its backoff
        while the other requests go on, until the retry policy gives up. Exactly one result per item."""
        concurrency = concurrency or self.concurrency
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        if batch_size > 1 and batch_size > self.max_batch_size:
            raise ValueError(f"batch_size {batch_size} is above model {self.model!r}'s max batch size {self.max_batch_size}")
        parameters = self.parameters(conf, iou, max_det)
        pending = _GrpcPending(self) if self.protocol == "grpc" else _HttpPending(self)
        source, exhausted = enumerate(items), False
        ready: Deque[_Job] = collections.deque()  # to (re)submit now
        waiting: List[Tuple[float, int, _Job]] = []  # heap: transiently failed, resubmitted at their time
        order = itertools.count()
        while True:
            now = time.monotonic()
            while waiting and waiting[0][0] <= now:
                ready.append(heapq.heappop(waiting)[2])
            while len(pending) < concurrency and (ready or (not exhausted and len(pending) + len(waiting) < concurrency)):
                if ready:
                    job = ready.popleft()
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
                    job = _Job(chunk)
                endpoint = self._pick(job.avoid)
                endpoint.sent += 1
                pending.submit(job, endpoint, parameters)
            if not len(pending):
                if waiting:
                    time.sleep(max(0.0, waiting[0][0] - time.monotonic()))
                    continue
                return
            done = pending.wait(max(0.0, waiting[0][0] - time.monotonic()) if waiting else None)
            if done is None:
                continue  # a retry is due
            job, endpoint, outcome = done
            if isinstance(outcome, ClientError):
                if is_transient(outcome):
                    job.failures += 1
                    decision = self._decide(endpoint, outcome, job.failures, job.started)
                    if not isinstance(decision, ClientError):
                        job.avoid = endpoint
                        heapq.heappush(waiting, (time.monotonic() + decision, next(order), job))
                        continue
                    outcome = decision
                elif isinstance(outcome, ServerError) and len(job.chunk) > 1:
                    ready.extend(_Job([entry]) for entry in job.chunk)  # find the bad image(s): the others get boxes
                    continue
                for index, item, _ in job.chunk:
                    yield ItemResult(index, item, error=outcome)
            else:
                endpoint.healthy = True
                for (index, item, _), detections in zip(job.chunk, outcome):
                    yield ItemResult(index, item, detections=detections)


class _Job:
    """A stream request: its images (index, item, payload), and its tries so far."""

    def __init__(self, chunk: list):
        self.chunk, self.failures, self.started, self.avoid = chunk, 0, time.monotonic(), None


class _GrpcPending:
    """In-flight gRPC requests: ``async_infer`` callbacks (gRPC threads) put the outcomes on a queue."""

    def __init__(self, detector: Detector):
        self.detector, self.done, self.count = detector, queue.Queue(), 0

    def __len__(self) -> int:
        return self.count

    def submit(self, job: _Job, endpoint: _Endpoint, parameters) -> None:
        d = self.detector

        def callback(result, error):
            try:
                self.done.put((job, endpoint, d._error(error, endpoint.url) if error is not None else parse_result(result)))
            except Exception as failure:  # noqa: BLE001 — a bad response must not lose the item
                self.done.put((job, endpoint, ClientError(f"cannot read the response: {failure}")))

        try:
            endpoint.client.async_infer(d.model, d._inputs([p for _, _, p in job.chunk]), callback, outputs=d._outputs,
                                        client_timeout=d.timeout, parameters=parameters)
        except Exception as error:  # noqa: BLE001
            self.done.put((job, endpoint, d._error(error, endpoint.url)))
        self.count += 1

    def wait(self, timeout: Optional[float] = None):
        """(job, endpoint, detections or ClientError) of a finished request; None if none within ``timeout``."""
        try:
            done = self.done.get(timeout=timeout)
        except queue.Empty:
            return None
        self.count -= 1
        return done


class _HttpPending:
    """In-flight HTTP requests: the client's greenlet pool runs them; we collect whichever finishes first."""

    def __init__(self, detector: Detector):
        self.detector, self.requests = detector, []

    def __len__(self) -> int:
        return len(self.requests)

    def submit(self, job: _Job, endpoint: _Endpoint, parameters) -> None:
        d = self.detector
        try:
            request = endpoint.client.async_infer(d.model, d._inputs([p for _, _, p in job.chunk]), outputs=d._outputs,
                                                  parameters=parameters)
        except d._caught as error:
            request = d._error(error, endpoint.url)
        self.requests.append((job, endpoint, request))

    def wait(self, timeout: Optional[float] = None):
        import gevent

        def finished(request) -> bool:
            return isinstance(request, ClientError) or request._greenlet.ready()

        if not any(finished(r) for _, _, r in self.requests):
            gevent.wait([r._greenlet for _, _, r in self.requests], timeout=timeout, count=1)
        for position, (job, endpoint, request) in enumerate(self.requests):
            if finished(request):
                del self.requests[position]
                if isinstance(request, ClientError):
                    return job, endpoint, request
                try:
                    return job, endpoint, parse_result(request.get_result())
                except self.detector._caught as error:
                    return job, endpoint, self.detector._error(error, endpoint.url)
        return None


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
  %(prog)s image photos/ -u a:8001,b:8001 --retries 20 --retry-deadline 60

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
    group.add_argument("-u", "--url", help="host:port (default localhost:8001 for grpc, localhost:8000 for http); "
                                           "several comma-separated (a:8001,b:8001): round robin over the healthy ones")
    group.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default grpc")
    group.add_argument("-t", "--client-timeout", type=float, metavar="SECONDS", help="per-request timeout")
    group.add_argument("-i", "--model-info", action="store_true",
                       help="print the model's metadata and config first, its inference statistics last")
    group.add_argument("-v", "--verbose", action="store_true", help="tritonclient's verbose request/response log")
    group = parser.add_argument_group("retries (server unreachable or restarting, model not ready, a dead backend "
                                      "instance; never a bad input)")
    group.add_argument("--retries", type=int, default=DEFAULT_RETRY.attempts - 1, metavar="N",
                       help=f"retries per request after the first try (default {DEFAULT_RETRY.attempts - 1}; 0: none)")
    group.add_argument("--retry-deadline", type=float, default=DEFAULT_RETRY.deadline, metavar="SECONDS",
                       help=f"no retry starts later than this after a request's first try (default "
                            f"{DEFAULT_RETRY.deadline:g}; 0: no deadline)")
    group.add_argument("--backoff", type=float, default=DEFAULT_RETRY.initial_backoff, metavar="SECONDS",
                       help=f"first wait before a retry, doubled each time (default {DEFAULT_RETRY.initial_backoff:g})")
    group.add_argument("--max-backoff", type=float, default=DEFAULT_RETRY.max_backoff, metavar="SECONDS",
                       help=f"longest wait between retries (default {DEFAULT_RETRY.max_backoff:g})")
    group.add_argument("--cooldown", type=float, default=2.0, metavar="SECONDS",
                       help="with several -u servers: how long a failed server is skipped before a health check "
                            "(default 2)")
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
    if args.retries < 0 or args.retry_deadline < 0 or args.cooldown < 0:
        parser.error("--retries, --retry-deadline and --cooldown must be >= 0")
    if not 0 <= args.backoff <= args.max_backoff:
        parser.error("--backoff must be between 0 and --max-backoff")


def retry_policy(args) -> RetryPolicy:
    """The --retries/--retry-deadline/--backoff/--max-backoff flags as a RetryPolicy."""
    if args.retries == 0:
        return RetryPolicy.disabled()
    return RetryPolicy(attempts=args.retries + 1, initial_backoff=args.backoff, max_backoff=args.max_backoff,
                       deadline=args.retry_deadline or None)


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
                            timeout=args.client_timeout, concurrency=args.concurrency, verbose=args.verbose,
                            retry=retry_policy(args), cooldown=args.cooldown)
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
