"""What the server allows: its caps, and who may talk to it (the address rule and the token)."""

from __future__ import annotations

import hmac
import ipaddress
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """The server's caps. ``token``: the bearer token every ``/v1/`` request must carry (None: no token)."""

    max_streams: int = 64  # samples in flight at once, all models together
    max_length: int = 10_000  # characters one sample may ask for
    max_body_bytes: int = 256 * 1024  # a request body, and so a prime or a text to score
    deadline_s: float = 300.0  # a request's whole life; a stream that outlives it ends with "deadline"
    token: str | None = None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine: localhost, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>``, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    ok_scheme = scheme.lower() == "bearer"
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")) and ok_scheme


class Capacity:
    """Counts the samples in flight against ``Limits.max_streams``; thread-safe."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> bool:
        """Take ``n`` places if they are free (True), else take none (False)."""
        with self._lock:
            if self.in_use + n > self.limit:
                return False
            self.in_use += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.in_use -= n
