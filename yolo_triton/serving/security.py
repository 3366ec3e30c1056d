"""The production serving profile: restricted admin APIs, TLS on gRPC, HTTPS in front of Triton's HTTP endpoint.

Triton serves every API to anyone who reaches its ports unless told otherwise. Two groups must not be open to
the clients that send images:

* ``model-repository`` (index, load, unload) — a load request may carry model files in its parameters, which
  Triton writes to disk and executes: the one path from request data into the server's filesystem;
* ``shared-memory`` (register/unregister system and CUDA regions) — maps host memory named by the caller;
* ``trace`` and ``logging`` — change where and what the server writes.

`make serve` (``--profile production``) restricts them behind a request header, on gRPC and HTTP alike (Triton's
``--grpc-restricted-protocol`` / ``--http-restricted-api``): ``admin-key: <secret>`` over HTTP, and over gRPC the
metadata key Triton derives from it, ``triton-grpc-protocol-admin-key`` (``admin_headers`` gives either).
Inference, health, metadata, config and statistics stay open. ``--profile open`` restricts nothing (benchmarks on a trusted host:
``perf_analyzer`` cannot send the header over gRPC, and ``make bench`` registers CUDA shared memory).

TLS: Triton's gRPC endpoint has TLS of its own (``--grpc-use-ssl``, mutual with ``--grpc-use-ssl-mutual``); its
HTTP endpoint has none, so ``TLSTerminator`` accepts HTTPS and forwards the bytes to the HTTP endpoint, which
then listens on 127.0.0.1 only.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import ssl
import threading
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

PROFILES = ("production", "open")
ADMIN_HEADER = "admin-key"
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"


def restricted_flags(key: str, header: str = ADMIN_HEADER, apis: Sequence[str] = RESTRICTED_APIS) -> List[str]:
    """Triton flags that make ``apis`` answer only requests carrying ``header: key`` (gRPC metadata or HTTP)."""
    if not key or any(c in key for c in ":=, \n"):
        raise ValueError("the admin key must be non-empty, without spaces, ':', '=' or ','")
    if header != header.lower():
        raise ValueError(f"gRPC metadata keys are lower case: use {header.lower()!r}")
    setting = f"{','.join(apis)}:{header}={key}"
    return [f"--grpc-restricted-protocol={setting}", f"--http-restricted-api={setting}"]


def admin_headers(protocol: str, key: str, header: str = ADMIN_HEADER) -> dict:
    """The request headers that open the restricted APIs: Triton's gRPC endpoint expects the key under a
    ``triton-grpc-protocol-`` prefix, its HTTP endpoint as given."""
    return {f"triton-grpc-protocol-{header}" if protocol == "grpc" else header: key}


def admin_key(key_file: Path, environ=os.environ) -> Tuple[str, str]:
    """The admin key and where it came from: ``TRITON_ADMIN_KEY``, else ``key_file``, else a new random key
    written to ``key_file`` (mode 0600) so that the operator of this host can use it."""
    if environ.get(ADMIN_KEY_ENV):
        return environ[ADMIN_KEY_ENV], f"${ADMIN_KEY_ENV}"
    if key_file.exists():
        return key_file.read_text().strip(), str(key_file)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(key + "\n")
    return key, f"{key_file} (new)"


def grpc_tls_flags(certificate: Path, key: Path, client_ca: Optional[Path] = None) -> List[str]:
    """TLS on Triton's gRPC endpoint; with ``client_ca``, mutual TLS (clients need a certificate it signed)."""
    for path in (certificate, key, client_ca):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"TLS file not found: {path}")
    flags = [f"--grpc-server-cert={certificate}", f"--grpc-server-key={key}"]
    if client_ca:
        return ["--grpc-use-ssl-mutual=true", *flags, f"--grpc-root-cert={client_ca}"]
    return ["--grpc-use-ssl=true", *flags]


def server_tls_context(certificate: Path, key: Path, client_ca: Optional[Path] = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certificate), str(key))
    if client_ca:
        context.load_verify_locations(str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class TLSTerminator:
    """HTTPS on ``listen`` forwarded as plain bytes to ``target`` (Triton's HTTP endpoint on localhost).

    Byte-level forwarding, not an HTTP proxy: headers (the admin key), keep-alive and Triton's binary tensor
    extension pass through untouched. Runs its own event loop in a daemon thread."""

    def __init__(self, listen: Tuple[str, int], target: Tuple[str, int], context: ssl.SSLContext):
        self.listen, self.target, self.context = listen, target, context
        self._loop = asyncio.new_event_loop()
        self._server: Optional[asyncio.AbstractServer] = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-terminator", daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the other side went away: close ours too
        finally:
            writer.close()

    async def _connection(self, client_reader, client_writer) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()  # Triton is not up (yet): the client sees a closed connection, as without us
            return
        await asyncio.gather(self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer))

    def start(self) -> "TLSTerminator":
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, *self.listen, ssl=self.context), self._loop)
        self._server = started.result(timeout=10)  # a port in use raises here, in the caller
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
