"""The servers of a Detector: round robin over the healthy ones, a cool-down with a health check for one that
failed, and the retry loop that fails a request over to another server.

This is the part of retrying and balancing that gRPC's channel cannot do (``transport`` says what it does): it
sees every failure of a call, of either protocol, so it keeps the counts, sends a retry to *another server* at
once, skips a server whose model is not ready until a health check (server and model ready) passes again, and
enforces the policy's overall deadline."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Union

from .errors import ClientError, ModelNotReady, ServerUnreachable, is_transient
from .retry import RetryPolicy


class Endpoint:
    """One server of a Detector: its tritonclient client, health and counts."""

    def __init__(self, url: str, client):
        self.url, self.client = url, client
        self.healthy, self.retry_at = True, 0.0  # unhealthy: skipped until retry_at, then health-checked
        self.sent = self.failed = 0  # inference calls sent to it / failed transiently on it


class Servers:
    """``Endpoint``s over one ``transport`` (see ``transport``) for one model, with a ``cooldown`` in seconds."""

    def __init__(self, urls: List[str], transport, model: str, cooldown: float):
        self.transport, self.model, self.cooldown = transport, model, cooldown
        self.endpoints: List[Endpoint] = []
        self._lock, self._next = threading.Lock(), 0
        try:
            for url in urls:
                self.endpoints.append(Endpoint(url, transport.make(url)))
        except BaseException:
            self.close()
            raise

    def reconnect(self) -> None:
        """New clients for every server (the transport's channel arguments changed)."""
        for endpoint in self.endpoints:
            old, endpoint.client = endpoint.client, self.transport.make(endpoint.url)
            old.close()

    def close(self) -> None:
        endpoints, self.endpoints = self.endpoints, []
        for endpoint in endpoints:
            endpoint.client.close()

    def status(self) -> List[Dict[str, Any]]:
        return [{"url": e.url, "healthy": e.healthy, "sent": e.sent, "failed": e.failed} for e in self.endpoints]

    def set_down(self, endpoint: Endpoint) -> None:
        endpoint.healthy, endpoint.retry_at = False, time.monotonic() + self.cooldown

    def mark_failed(self, endpoint: Endpoint, error: ClientError) -> None:
        endpoint.failed += 1
        if isinstance(error, (ServerUnreachable, ModelNotReady)):  # a dead backend instance: the server still answers
            self.set_down(endpoint)

    def healthy(self, endpoint: Endpoint) -> bool:
        """Server and model ready (a short health check, no retries)."""
        kwargs = self.transport.health_kwargs()
        try:
            return bool(endpoint.client.is_server_ready(**kwargs) and endpoint.client.is_model_ready(self.model, **kwargs))
        except self.transport.caught:
            return False

    def pick(self, avoid: Optional[Endpoint] = None) -> Endpoint:
        """The next healthy server round robin (not ``avoid`` if another is healthy); unhealthy ones whose cool-down
        is over are health-checked first. None healthy: the one that was due back first (the request probes it)."""
        now = time.monotonic()
        for endpoint in self.endpoints:
            if not endpoint.healthy and now >= endpoint.retry_at:
                if self.healthy(endpoint):
                    endpoint.healthy = True
                else:
                    endpoint.retry_at = time.monotonic() + self.cooldown
        healthy = [e for e in self.endpoints if e.healthy]
        pool = [e for e in healthy if e is not avoid] or healthy
        if not pool:
            others = [e for e in self.endpoints if e is not avoid] or self.endpoints
            return min(others, key=lambda e: e.retry_at)
        with self._lock:
            count = len(self.endpoints)
            for step in range(count):
                endpoint = self.endpoints[(self._next + step) % count]
                if endpoint in pool:
                    self._next = (self._next + step + 1) % count
                    return endpoint
        return pool[0]

    def decide(self, retry: RetryPolicy, endpoint: Endpoint, error: ClientError, failures: int,
               started: float) -> Union[float, ClientError]:
        """After a failed try on ``endpoint``: seconds to wait before the next try, or the error to give up with.
        No wait when another healthy server can take the retry."""
        if not is_transient(error):
            return error
        self.mark_failed(endpoint, error)
        elsewhere = any(e.healthy and e is not endpoint for e in self.endpoints)
        return retry.decide(error, failures, started, 0.0 if elsewhere else retry.backoff(failures))

    def retrying(self, retry: RetryPolicy, operation: Callable[[Endpoint], Any]) -> Any:
        """``operation(endpoint)`` under the retry policy, failing over between servers; the tries gRPC made inside
        a call (``ClientError.tries``) count toward the policy's attempts."""
        started, failures, avoid = time.monotonic(), 0, None
        while True:
            endpoint = self.pick(avoid)
            try:
                result = operation(endpoint)
            except ClientError as error:
                failures += error.tries
                decision = self.decide(retry, endpoint, error, failures, started)
                if isinstance(decision, ClientError):
                    if decision is error:
                        raise
                    raise decision from error
                time.sleep(decision)
                avoid = endpoint
                continue
            endpoint.healthy = True
            return result
