"""What the client raises: one ``ClientError`` family, and the conversion of tritonclient's and the socket's
exceptions into it (the server's own message kept). ``is_transient`` is the line between a failure worth retrying
(no server there, model not loaded, a dead backend instance) and one that is not (a bad image, a timeout)."""
from __future__ import annotations

from typing import Optional


class ClientError(Exception):
    """Base of every error this client raises (besides plain argument errors).

    ``tries``: how many tries the failed call made; more than 1 when gRPC retried it inside the channel."""

    tries = 1


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


def status_of(error) -> str:
    """A tritonclient exception's status without gRPC's ``StatusCode.`` prefix (``UNAVAILABLE``, ``400``...)."""
    return str(error.status() or "").replace("StatusCode.", "")


def convert(error: BaseException, url: str, model: str) -> ClientError:
    """A tritonclient / socket exception as one of ours, the server's message kept."""
    from tritonclient.utils import InferenceServerException

    if isinstance(error, ClientError):
        return error
    if isinstance(error, InferenceServerException):
        status, message = status_of(error), error.message() or str(error)
        if "is restricted" in message:  # the production profile's admin APIs, without the admin key: not transient
            return ServerError(f"{message} (an admin API of the production profile: send the admin key, see "
                               "yolo_triton.serving.security.admin_headers)", status or None)
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
