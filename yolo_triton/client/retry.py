"""The retry policy: which failures are tried again, how often, how far apart, and until when.

One policy drives both layers that retry: gRPC's own retry inside a channel, where it can carry the whole policy
(``transport.in_channel_attempts`` turns the numbers into the channel's service config), and the client's loop
(``servers``, ``api.Detector.stream``) for the rest, which counts gRPC's tries (``ClientError.tries``) as its own."""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Optional, Union

from .errors import ClientError, DeadlineExceeded, is_transient


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
