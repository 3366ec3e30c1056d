"""The two ways to Triton: one tritonclient client per server URL, gRPC or HTTP, with our exceptions.

**gRPC: what the channel does itself.** tritonclient hands the URL to ``grpc.insecure_channel`` /
``grpc.secure_channel`` as the channel's *target* and takes our channel arguments whole, so the channel is
configured here, not in tritonclient:

- a service config (``grpc.service_config``) with the ``round_robin`` load-balancing policy: a target that resolves
  to several addresses (``dns:///triton-headless:8001``, a Kubernetes headless Service; ``ipv4:10.0.0.5:8001,
  10.0.0.6:8001``) is spread per request over every address that is connected, and an address whose connection
  fails leaves the rotation until gRPC has reconnected to it (one address: the same as gRPC's default);
- in that service config, for ``ModelInfer`` only, a ``retryPolicy`` on ``UNAVAILABLE`` (no server, connection
  refused, "Server is stopping") and ``NOT_FOUND`` (model not loaded there: Triton answers it before running
  anything), with the ``RetryPolicy``'s numbers: gRPC retries such a request inside the call, through the load
  balancer, so on another address of the target when there is one (``in_channel_attempts`` says when);
- the reconnect backoff (0.1 s, at most 1 s: a restarted server is reconnected within a second), keepalive, and
  gRPC's transparent retry of a request that never left the client (always on).

What it cannot do stays ours (``servers``, ``api``): a dead backend instance (``INTERNAL ... Stub process ... is
not healthy``: the status of any internal error, only the message tells), the overall deadline (gRPC's deadline
is per call and cuts a slow answer too; it checks none between its tries), more than 5 tries (gRPC's cap), a
cool-down with a health check of a server whose model is not ready (the balancer only sees connections), the
spread over a *list* of URLs (one channel per URL: each its own TLS name, health and counts), the per-item
accounting of ``stream``, and HTTP, where tritonclient has none of this. gRPC's tries inside a call are invisible
to the application (no count comes back), so a failure gRPC retried carries them in ``ClientError.tries``, for
the policy's ``attempts`` to count.
"""
from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import specs
from .errors import ClientError, InputError, ServerUnreachable, convert, status_of
from .results import parse_result
from .retry import RetryPolicy

PROTOCOLS = ("grpc", "http")
DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}
GRPC_TARGETS = ("dns:", "ipv4:", "ipv6:", "unix:")  # gRPC name-resolver schemes, passed to the channel as they are
GRPC_RETRIED = ("UNAVAILABLE", "NOT_FOUND")  # what gRPC retries inside the channel (ModelInfer only)
GRPC_MAX_ATTEMPTS = 5  # gRPC's client-side cap on a retryPolicy's maxAttempts
GRPC_JITTER = 1.2  # gRPC waits each backoff give or take 20 % (measured: 0.1+0.2+0.4+0.8 s took 1.4–1.7 s)
RETRY_BUFFER = 64 << 20  # gRPC retries only a request it still holds: its default per-call buffer is 256 KiB
INFER_METHOD = {"service": "inference.GRPCInferenceService", "method": "ModelInfer"}


def split_urls(urls: Union[None, str, Sequence[str]]) -> List[str]:
    """Server URLs from a list or a comma-separated string, blanks dropped. A gRPC ``ipv4:``/``ipv6:`` target keeps
    its own comma-separated addresses: one channel, balanced by gRPC."""
    if urls is None:
        return []
    parts = urls.split(",") if isinstance(urls, str) else [p for u in urls for p in str(u).split(",")]
    out: List[str] = []
    for part in filter(None, (p.strip() for p in parts)):
        if out and out[-1].startswith(("ipv4:", "ipv6:")) and (part[0].isdigit() or part[0] == "["):
            out[-1] += f",{part}"  # another address of the same ipv4:/ipv6: target
        else:
            out.append(part)
    return out


def server_urls(url: Union[None, str, Sequence[str]], protocol: str, ssl: bool) -> Tuple[List[str], bool]:
    """(URLs without their ``grpc://``/``http://``/``https://`` prefix, ssl): https means TLS."""
    urls = split_urls(url) or [DEFAULT_URLS[protocol]]
    for i, one in enumerate(urls):
        for scheme in ("grpc://", "http://", "https://"):
            if one.startswith(scheme):
                ssl, urls[i] = ssl or scheme == "https://", one[len(scheme):]
        if protocol == "http" and urls[i].startswith(GRPC_TARGETS):
            raise ValueError(f"{urls[i]} is a gRPC target; HTTP takes host:port")
    if len(set(urls)) != len(urls):
        raise ValueError(f"the same server twice in {', '.join(urls)}")
    return urls, ssl


def in_channel_attempts(policy: RetryPolicy, servers: int) -> int:
    """Tries gRPC makes inside one inference call (1: gRPC does not retry): the policy's ``attempts`` when gRPC can
    carry the whole policy in one call — one URL (with several, our failover sends a retry to another server at
    once, where gRPC would retry the same one after a backoff), at most gRPC's cap of 5 tries, and backoffs that
    end within the deadline (gRPC checks no deadline between its tries). Otherwise (more tries, a deadline only)
    the retries are all ours, so the policy's numbers hold exactly."""
    attempts = policy.attempts
    if servers > 1 or attempts is None or not 1 < attempts <= GRPC_MAX_ATTEMPTS:
        return 1
    waits = sum(min(policy.max_backoff, policy.initial_backoff * policy.multiplier ** i) for i in range(attempts - 1))
    return attempts if policy.deadline is None or waits * GRPC_JITTER < policy.deadline else 1


def service_config(policy: RetryPolicy, attempts: int) -> str:
    """The channel's gRPC service config: round robin over the target's addresses, and gRPC's own retry of
    ``ModelInfer`` on ``GRPC_RETRIED`` statuses with the policy's backoff (``attempts`` > 1)."""
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if attempts > 1:
        config["methodConfig"] = [{"name": [INFER_METHOD], "retryPolicy": {
            "maxAttempts": attempts,
            "initialBackoff": f"{max(policy.initial_backoff, 0.001):.3f}s",  # gRPC wants them > 0
            "maxBackoff": f"{max(policy.max_backoff, 0.001):.3f}s",
            "backoffMultiplier": policy.multiplier,
            "retryableStatusCodes": list(GRPC_RETRIED)}}]
    return json.dumps(config)


class Transport:
    """One protocol's tritonclient clients and calls, for one model. ``make(url)`` a client for a server;
    ``call`` a query; ``infer`` a request; ``pending()`` the in-flight set of ``stream``; ``error`` our exception."""

    protocol = ""
    caught: tuple = (Exception,)  # what a failed tritonclient call may raise
    attempts = 1  # tries gRPC makes inside one inference call

    def __init__(self, module, model: str, timeout: Optional[float], verbose: bool):
        self.module, self.model, self.timeout, self.verbose = module, model, timeout, verbose
        self.outputs = [module.InferRequestedOutput(name) for name in specs.ENSEMBLE_OUTPUTS]

    def inputs(self, payloads: Sequence[bytes]):
        tensor = self.module.InferInput(specs.ENSEMBLE_INPUT, [len(payloads), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[p] for p in payloads], dtype=np.object_).reshape(len(payloads), 1))
        return [tensor]

    def configure(self, retry: RetryPolicy) -> bool:
        """Adapt to a new retry policy; True if the clients must be made again."""
        return False

    def error(self, error: BaseException, url: str, payloads: Sequence[bytes] = ()) -> ClientError:
        """``error`` as one of ours; ``payloads``: those of the inference call that failed (for ``tries``)."""
        return convert(error, url, self.model)

    def call(self, client, url: str, method: str, *args, **kwargs):
        """A tritonclient call with our exceptions."""
        try:
            return getattr(client, method)(*args, **kwargs)
        except self.caught as error:  # converted, never swallowed
            raise self.error(error, url) from error

    def query(self, client, url: str, method: str, *args):
        """A server query as plain JSON-like dicts."""
        return self.call(client, url, method, *args)

    def health_kwargs(self) -> dict:
        return {}

    def infer(self, client, url: str, payloads: Sequence[bytes], parameters: Optional[dict]):
        try:
            result = client.infer(self.model, self.inputs(payloads), outputs=self.outputs, parameters=parameters,
                                  **self.infer_kwargs())
        except self.caught as error:
            raise self.error(error, url, payloads) from error
        return parse_result(result)

    def infer_kwargs(self) -> dict:
        return {}


class GrpcTransport(Transport):
    """tritonclient's gRPC client, on a channel configured here (see the module's docstring)."""

    protocol = "grpc"

    def __init__(self, model: str, timeout: Optional[float], verbose: bool, *, ssl: bool, root_certificates=None,
                 private_key=None, certificate_chain=None, retry: RetryPolicy, servers: int = 1):
        import tritonclient.grpc as module

        super().__init__(module, model, timeout, verbose)
        self.ssl, self.client_certificate = ssl, bool(certificate_chain)
        self.certificates = {"root_certificates": root_certificates, "private_key": private_key,
                             "certificate_chain": certificate_chain}
        self.servers = servers
        self.configure(retry)

    def configure(self, retry: RetryPolicy) -> bool:
        """Channel arguments for ``retry``; True if they changed (new channels needed)."""
        attempts = in_channel_attempts(retry, self.servers)
        keepalive = self.module.KeepAliveOptions()
        # tritonclient's own channel options (ours replace them whole), a short reconnect backoff (a restarted server
        # is reconnected within a second, not after gRPC's default of up to 120 s), the service config
        args = [
            ("grpc.max_send_message_length", self.module.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", self.module.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.service_config", service_config(retry, attempts)),
            ("grpc.enable_retries", 1),
            ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER),
        ]
        changed = getattr(self, "channel_args", None) not in (None, args)
        self.attempts, self.channel_args = attempts, args
        return changed

    def make(self, url: str):
        return self.module.InferenceServerClient(url, verbose=self.verbose, ssl=self.ssl, channel_args=self.channel_args,
                                                 **self.certificates)

    def call(self, client, url: str, method: str, *args, **kwargs):
        kwargs.setdefault("client_timeout", self.timeout or 30.0)
        return super().call(client, url, method, *args, **kwargs)

    def query(self, client, url: str, method: str, *args):
        return self.call(client, url, method, *args, as_json=True)

    def health_kwargs(self) -> dict:
        return {"client_timeout": min(self.timeout or 2.0, 2.0)}

    def infer_kwargs(self) -> dict:
        return {"client_timeout": self.timeout}

    def error(self, error: BaseException, url: str, payloads: Sequence[bytes] = ()) -> ClientError:
        converted = convert(error, url, self.model)
        status = status_of(error) if hasattr(error, "status") else ""
        if payloads and status in GRPC_RETRIED and sum(map(len, payloads)) + (64 << 10) <= RETRY_BUFFER:
            converted.tries = self.attempts  # gRPC retried it inside the call (it held the whole request)
        # something listens there but the connection failed: most often a TLS mismatch, say which way
        text = str(converted).lower()
        answered = "server is stopping" in text or "request id" in text  # Triton itself said it, not a handshake
        if isinstance(converted, ServerUnreachable) and "refused" not in text and not answered:
            if not self.ssl:
                hint = "if the server uses TLS, connect with ssl=True / -s and its CA certificate / -r"
            elif "CERTIFICATE_VERIFY_FAILED" in str(converted):
                hint = "the server's certificate is not trusted: give its CA certificate (root_certificates / -r)"
            elif not self.client_certificate:
                hint = "if the server requires mutual TLS, give the client key and certificate (-p, -x)"
            else:
                hint = "check that the certificates match the server's"
            converted.args = (f"{converted.args[0]} ({hint})",)
        return converted

    def pending(self) -> "_GrpcPending":
        return _GrpcPending(self)


class HttpTransport(Transport):
    """tritonclient's HTTP client (gevent): no retry or balancing of its own, all of it is ours."""

    protocol = "http"

    def __init__(self, model: str, timeout: Optional[float], verbose: bool, *, ssl: bool, root_certificates=None,
                 private_key=None, certificate_chain=None, concurrency: int = 4):
        import tritonclient.http as module
        from gevent import Timeout

        super().__init__(module, model, timeout, verbose)
        self.caught = (Exception, Timeout)  # gevent's Timeout is a BaseException
        self.ssl, self.concurrency = ssl, concurrency
        self.options = {k: v for k, v in (("ca_certs", root_certificates), ("keyfile", private_key),
                                          ("certfile", certificate_chain)) if v} or None

    def make(self, url: str):
        return self.module.InferenceServerClient(url, verbose=self.verbose, concurrency=self.concurrency, ssl=self.ssl,
                                                 ssl_options=self.options, connection_timeout=self.timeout or 60.0,
                                                 network_timeout=self.timeout or 300.0)

    def pending(self) -> "_HttpPending":
        return _HttpPending(self)


def check_files(**paths: Optional[str]) -> None:
    """TLS files that were given must exist (tritonclient would fail later, less clearly)."""
    for name, path in paths.items():
        if path is not None and not Path(path).is_file():
            raise InputError(f"{name.replace('_', ' ')} file not found: {path}")


# ---------------------------------------------------------------------------------------------------- in flight


class _GrpcPending:
    """In-flight gRPC requests: ``async_infer`` callbacks (gRPC threads) put the outcomes on a queue."""

    def __init__(self, transport: GrpcTransport):
        self.transport, self.done, self.count = transport, queue.Queue(), 0

    def __len__(self) -> int:
        return self.count

    def submit(self, job: Any, endpoint, payloads: Sequence[bytes], parameters) -> None:
        t = self.transport

        def callback(result, error):
            try:
                self.done.put((job, endpoint, t.error(error, endpoint.url, payloads) if error is not None
                               else parse_result(result)))
            except Exception as failure:  # noqa: BLE001 — a bad response must not lose the item
                self.done.put((job, endpoint, ClientError(f"cannot read the response: {failure}")))

        try:
            endpoint.client.async_infer(t.model, t.inputs(payloads), callback, outputs=t.outputs,
                                        client_timeout=t.timeout, parameters=parameters)
        except Exception as error:  # noqa: BLE001
            self.done.put((job, endpoint, t.error(error, endpoint.url)))
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

    def __init__(self, transport: HttpTransport):
        self.transport, self.requests = transport, []

    def __len__(self) -> int:
        return len(self.requests)

    def submit(self, job: Any, endpoint, payloads: Sequence[bytes], parameters) -> None:
        t = self.transport
        try:
            request = endpoint.client.async_infer(t.model, t.inputs(payloads), outputs=t.outputs, parameters=parameters)
        except t.caught as error:
            request = t.error(error, endpoint.url)
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
                except self.transport.caught as error:
                    return job, endpoint, self.transport.error(error, endpoint.url)
        return None
