"""The bounds of ``kmlp serve``: every limit on a request, a connection and the work in flight.

Every other serving module reads its bounds from :class:`Limits`; docs/serving-limits.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Everything ``kmlp serve`` bounds, in one place. A request beyond a bound gets status 400 with
    a message naming it; more work than ``max_pending``, or a request when ``max_connections`` are
    open and none is idle, gets 503 (try again); a request line, headers or body arriving too slowly
    gets 408. Timeouts are in seconds."""

    max_body_bytes: int = 1 << 20   # one request body, 1 MiB of JSON
    max_discard_bytes: int = 64 << 20  # body read and dropped after refusing it, so the answer is read
    max_header_bytes: int = 16_384  # request line and headers, however they arrive
    max_items: int = 1_000          # values in one input: names to score, contexts, ...
    max_chars: int = 100            # characters in one string value: a name, context or prefix
    max_count: int = 1_000          # names per generate call (an input named `count`)
    max_len: int = 100              # characters generated per name (an input named `max_len`)
    max_workers: int = 2            # model calls running at once, each on its own thread
    max_pending: int = 64           # requests running or waiting for a thread
    max_connections: int = 512      # open connections: a new one beyond closes the longest-idle one
    keep_alive_timeout: float = 5.0  # a connection with no request, since it opened or its last answer
    head_timeout: float = 10.0       # a request line and headers, from their first byte to their end
    body_idle_timeout: float = 10.0  # a pause in a request body: no new bytes of it for this long
    body_timeout: float = 60.0       # a whole request body, from the end of the headers

    def bounds(self) -> dict[str, tuple[int, int]]:
        """Inputs bounded by name, in any signature that has them: name -> (lowest, highest)."""
        return {"count": (1, self.max_count), "max_len": (1, self.max_len)}
