"""``Detector``: the Python API — connect and check, then ``detect``, ``detect_batch``, ``detect_many`` and
``stream`` (async requests, one result per item, transient failures retried while the others go on)."""
from __future__ import annotations

import collections
import heapq
import itertools
import json
import time
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from .. import specs
from ..specs import DetectionParams
from .errors import ClientError, InputError, ModelNotReady, ServerError, ServerUnreachable, WrongModel, is_transient
from .results import Detection, Item, ItemResult, read_item
from .retry import DEFAULT_RETRY, RetryPolicy
from .servers import Endpoint, Servers
from .transport import PROTOCOLS, GrpcTransport, HttpTransport, check_files, server_urls

DEFAULT_MODEL = specs.YOLOV7.ensemble_name
# the ensemble's request parameters
CONF_PARAMETER, IOU_PARAMETER, MAX_DET_PARAMETER, CLASSES_PARAMETER, AGNOSTIC_PARAMETER, MULTI_LABEL_PARAMETER = \
    DetectionParams.KEYS


class Detector:
    """A connection to one ensemble on one Triton server, or on several, load-balanced.

    ``url`` without a scheme (``host:port``; ``http://``/``https://``/``grpc://`` prefixes are accepted, https
    meaning ``ssl=True``), default ``localhost:8001`` for gRPC and ``localhost:8000`` for HTTP; over gRPC also any
    gRPC target (``dns:///name:8001``, ``ipv4:10.0.0.5:8001,10.0.0.6:8001``), spread over its addresses by gRPC's
    round robin. Several servers: a list of URLs or one comma-separated string; requests go round robin over the
    healthy ones (one tritonclient client each). A server that fails transiently (unreachable, model not ready)
    is marked unhealthy and skipped; after ``cooldown`` seconds it is health-checked (server and model ready) and
    used again if it passes; the failed request is retried on another server at once. ``requests_sent`` /
    ``servers()`` show the spread.

    ``retry``: a ``RetryPolicy`` for transient failures (default ``DEFAULT_RETRY``: 4 tries, backoff 0.1 s doubling
    up to 2 s, deadline 30 s; ``None`` or ``RetryPolicy.disabled()``: no retries). Input errors (``INVALID_ARG``,
    a bad image) are never retried. With one gRPC URL and a policy of at most 5 tries, gRPC's channel retries an
    unreachable server or a model not loaded itself, counted toward the same policy (docs/client.md). ``ssl``
    with ``root_certificates`` (CA PEM), ``private_key`` and ``certificate_chain`` (client key and certificate
    PEM, for mutual TLS). ``timeout`` in seconds per request (HTTP: also the connection timeout; fixed when the
    client is made). ``concurrency``: default requests in flight for ``stream``/``detect_many`` (and the HTTP
    connection pool size).

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
        urls, ssl = server_urls(url, protocol, ssl)
        self.urls, self.model, self.protocol, self.timeout, self.concurrency = urls, model, protocol, timeout, concurrency
        self.url, self.cooldown = urls[0], cooldown
        self._retry = retry or RetryPolicy.disabled()
        self._max_batch_size: Optional[int] = None
        check_files(root_certificate=root_certificates, private_key=private_key, certificate_chain=certificate_chain)
        tls = {"ssl": ssl, "root_certificates": root_certificates, "private_key": private_key,
               "certificate_chain": certificate_chain}
        if protocol == "grpc":
            self._transport = GrpcTransport(model, timeout, verbose, retry=self._retry, servers=len(urls), **tls)
        else:
            self._transport = HttpTransport(model, timeout, verbose, concurrency=concurrency, **tls)
        self.ssl = ssl
        self._servers = Servers(urls, self._transport, model, cooldown)
        try:
            if check:
                self.check()
        except BaseException:
            self.close()
            raise

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    @retry.setter
    def retry(self, policy: Optional[RetryPolicy]) -> None:
        """A new policy; gRPC channels whose own retry it changes are made again."""
        self._retry = policy or RetryPolicy.disabled()
        if self._transport.configure(self._retry):
            self._servers.reconnect()

    # -- servers

    @property
    def requests_sent(self) -> Dict[str, int]:
        """Inference calls sent per server URL (our retries included; gRPC's retries inside a call are not seen)."""
        return {e.url: e.sent for e in self._servers.endpoints}

    def servers(self) -> List[Dict[str, Any]]:
        """Per server: url, healthy, sent (inference calls), failed (transient failures seen there)."""
        return self._servers.status()

    def _call(self, method: str, *args, endpoint: Optional[Endpoint] = None, **kwargs):
        """A tritonclient call with our exceptions, on ``endpoint`` (else any server, under the retry policy); gRPC
        calls get the client timeout (default 30 s here)."""
        if endpoint is None:
            return self._servers.retrying(self._retry, lambda one: self._call(method, *args, endpoint=one, **kwargs))
        return self._transport.call(endpoint.client, endpoint.url, method, *args, **kwargs)

    def _query(self, method: str, *args, endpoint: Optional[Endpoint] = None):
        """A server query as plain JSON-like dicts over either protocol."""
        if endpoint is None:
            return self._servers.retrying(self._retry, lambda one: self._query(method, *args, endpoint=one))
        return self._transport.query(endpoint.client, endpoint.url, method, *args)

    def check(self) -> None:
        """Raise ``ServerUnreachable``, ``ModelNotReady`` or ``WrongModel`` unless the model can take our requests
        (on at least one server; the servers that fail start unhealthy)."""
        endpoints, failures = self._servers.endpoints, []
        for endpoint in endpoints:
            try:
                self._check_endpoint(endpoint)
                endpoint.healthy = True
            except WrongModel:
                raise
            except ClientError as error:
                if len(endpoints) == 1:
                    raise
                failures.append(error)
                self._servers.set_down(endpoint)
        if len(failures) == len(endpoints):
            raise type(failures[0])("; ".join(str(f) for f in failures)) from failures[0]

    def _check_endpoint(self, endpoint: Endpoint) -> None:
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

    def repository_index(self, endpoint: Optional[Endpoint] = None) -> List[dict]:
        index = self._query("get_model_repository_index", endpoint=endpoint)
        return index.get("models", []) if isinstance(index, dict) else list(index)

    def model_metadata(self) -> dict:
        return self._query("get_model_metadata", self.model)

    def model_config(self, model: Optional[str] = None) -> dict:
        """The config of this ensemble (or of ``model``, e.g. one of its steps) as the server has it."""
        config = self._query("get_model_config", model or self.model)
        return config.get("config", config)  # gRPC wraps it in {"config": ...}

    def class_names(self) -> List[str]:
        """The ensemble's class names in class-id order: the ``labels`` parameter of its last step (the
        postprocess), as the build wrote it."""
        steps = self.model_config().get("ensemble_scheduling", {}).get("step", [])
        postprocess = steps[-1]["model_name"] if steps else self.model
        labels = self.model_config(postprocess).get("parameters", {}).get("labels", {}).get("string_value")
        if not labels:
            raise WrongModel(f"model {postprocess!r} declares no class names (config parameter labels)")
        return json.loads(labels)

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
        self._servers.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests

    @staticmethod
    def parameters(conf: Optional[float] = None, iou: Optional[float] = None, max_det: Optional[int] = None,
                   classes: Optional[Iterable[int]] = None, agnostic_nms: Optional[bool] = None,
                   multi_label: Optional[bool] = None) -> Optional[dict]:
        """Triton request parameters overriding the postprocess config defaults (None: keep the default): the
        thresholds, and the options of the official ``detect.py`` — ``classes`` (keep only these class ids),
        ``agnostic_nms`` (one NMS across classes), ``multi_label`` (a box may carry every class above ``conf``)."""
        values = {CONF_PARAMETER: conf, IOU_PARAMETER: iou, MAX_DET_PARAMETER: max_det,
                  # Triton request parameters hold no lists: class ids travel as "0,2"
                  CLASSES_PARAMETER: None if classes is None else ",".join(str(int(c)) for c in classes),
                  AGNOSTIC_PARAMETER: agnostic_nms, MULTI_LABEL_PARAMETER: multi_label}
        return {k: v for k, v in values.items() if v is not None} or None

    def _infer(self, payloads: Sequence[bytes], parameters: Optional[dict]) -> List[List[Detection]]:
        def once(endpoint: Endpoint):
            endpoint.sent += 1
            return self._transport.infer(endpoint.client, endpoint.url, payloads, parameters)

        return self._servers.retrying(self._retry, once)

    def detect(self, item: Item, conf: Optional[float] = None, iou: Optional[float] = None,
               max_det: Optional[int] = None, **options: Any) -> List[Detection]:
        """Detections of one image (encoded bytes or a file path), sorted by score. ``options``: ``classes``,
        ``agnostic_nms``, ``multi_label`` (``parameters``), here and in the other ``detect*`` and ``stream``."""
        return self._infer([read_item(item)], self.parameters(conf, iou, max_det, **options))[0]

    def detect_batch(self, items: Sequence[Item], conf: Optional[float] = None, iou: Optional[float] = None,
                     max_det: Optional[int] = None, **options: Any) -> List[List[Detection]]:
        """Several images per request (``[B, 1]``, split at the model's max batch size); one list per item. A bad
        image fails its whole request: the server's message names the element (``IMAGE[i]: ...``)."""
        items = list(items)
        parameters, size, out = self.parameters(conf, iou, max_det, **options), self.max_batch_size, []
        for start in range(0, len(items), size):
            out += self._infer([read_item(i) for i in items[start:start + size]], parameters)
        return out

    def detect_many(self, items: Iterable[Item], *, concurrency: Optional[int] = None, batch_size: int = 1,
                    conf: Optional[float] = None, iou: Optional[float] = None, max_det: Optional[int] = None,
                    return_exceptions: bool = False, **options: Any) -> List[Union[List[Detection], ClientError]]:
        """Many images with ``concurrency`` async requests in flight; results in input order. The first failed
        item's error is raised, or with ``return_exceptions`` it takes the item's place in the list."""
        results = sorted(self.stream(items, concurrency=concurrency, batch_size=batch_size, conf=conf, iou=iou,
                                     max_det=max_det, **options), key=lambda r: r.index)
        if not return_exceptions:
            for result in results:
                if result.error is not None:
                    raise result.error
        return [r.detections if r.ok else r.error for r in results]

    def stream(self, items: Iterable[Item], *, concurrency: Optional[int] = None, batch_size: int = 1,
               conf: Optional[float] = None, iou: Optional[float] = None,
               max_det: Optional[int] = None, **options: Any) -> Iterator[ItemResult]:
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
        parameters, servers = self.parameters(conf, iou, max_det, **options), self._servers
        pending = self._transport.pending()
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
                endpoint = servers.pick(job.avoid)
                endpoint.sent += 1
                pending.submit(job, endpoint, [p for _, _, p in job.chunk], parameters)
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
                    job.failures += outcome.tries
                    decision = servers.decide(self._retry, endpoint, outcome, job.failures, job.started)
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
