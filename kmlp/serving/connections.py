"""Connections of ``kmlp serve``: uvicorn's HTTP/1.1 protocol, bounded in time, size and number.

:class:`BoundedH11Protocol` gives every phase of a request its timeout (408 when a request line,
headers or body arrive too slowly), bounds the request line and headers however they arrive (400),
answers a request only once its body is in (the rest of a refused body is read and dropped, so the
client reads the answer), and caps the open connections by closing the longest-idle ones (503 when
none is idle), so idle or slow clients cannot crowd out requests. Every error it answers itself is
TensorFlow Serving's ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from kmlp.serving.limits import Limits
from kmlp.serving.rest import error_response

_became_idle = itertools.count()  # the order in which connections became idle: the cap closes the lowest
_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line after the headers, as h11 finds it
_CLOSE = (b"connection", b"close")


class HeadBoundedConnection(h11.Connection):
    """h11's server side, refusing a request line and headers over ``max_head`` bytes however they
    arrive. h11's own bound (``max_incomplete_event_size``) holds only while a head is incomplete:
    a larger head that arrives whole in one read passes it."""

    def __init__(self, max_head: int):
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head)
        self.max_head = max_head
        self.refusal = ""  # why this class refused the request, when it did

    def head_size(self) -> int:
        """Bytes of the request line and headers received, up to their end if it has arrived."""
        data = self.trailing_data[0]
        end = _HEAD_END.search(data, 0, self.max_head + 3)
        return end.end() if end else len(data)

    def next_event(self):
        if self.their_state is h11.IDLE and self.head_size() > self.max_head:
            self.refusal = f"request line and headers over {self.max_head:,} bytes (the limit)"
            raise h11.RemoteProtocolError(self.refusal, error_status_hint=400)
        return super().next_event()


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 connection, with every phase of a request bounded in time and the number of
    open connections bounded without letting idle ones crowd out requests.

    uvicorn times a connection out only while it is idle after an answer (``timeout_keep_alive``):
    one that never sends a byte, or sends its headers or body slowly, stays open for ever; and its
    ``limit_concurrency`` counts idle connections, so enough of them make it refuse every request.
    Here the connection's phase decides its one timer:

    - idle (nothing received since it opened or since its last answer): closed after
      ``keep_alive_timeout``, by uvicorn's own keep-alive timer;
    - head (part of a request line and headers received): 408 once ``head_timeout`` has passed
      since its first byte;
    - body (headers received, body incomplete): 408 after ``body_idle_timeout`` without a byte of
      it, or ``body_timeout`` after the headers;
    - busy (the application has the whole request, or is answering it): no timer.

    When a connection opens beyond ``max_connections``, the longest-idle ones are closed; a request
    that arrives while the server is still over the cap, with no idle connection left to close,
    gets 503. A request in progress is never closed for the cap.

    A request line and headers over ``max_header_bytes`` get 400, however they arrive
    (:class:`HeadBoundedConnection`). An answer given before its request's body is in (a body over
    the limit, a wrong path) waits while the rest is read and dropped: a client that sends its
    whole body before reading then reads the answer, where closing with bytes unread would reset
    the connection under it. A body that goes on beyond ``max_discard_bytes``, or that the client
    waits to be asked for (``Expect: 100-continue``), is not read: the answer closes the connection.
    """

    def __init__(self, *args, limits: Limits, **kwargs):
        super().__init__(*args, **kwargs)
        self.conn = HeadBoundedConnection(limits.max_header_bytes)
        self.limits = limits
        self.became_idle = next(_became_idle)
        self.phase = ""             # the phase the timers were last set for
        self.phase_started = 0.0    # loop.time() when it began
        self.phase_timer: asyncio.TimerHandle | None = None
        self.application, self.app = self.app, self.answer_within_cap

    # -- uvicorn's events: each may change the phase -------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.close_idle_beyond_cap()
        self.set_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.set_timer()

    def on_response_complete(self) -> None:
        self.became_idle = next(_became_idle)
        super().on_response_complete()
        self.set_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_phase_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot read, in TensorFlow Serving's form."""
        self.answer_and_close(400, self.conn.refusal or msg)

    # -- timeouts -------------------------------------------------------------------------------

    def current_phase(self) -> str:
        """"idle", "head", "body", "busy" or "closed" (see the class's docstring)."""
        if self.transport.is_closing():
            return "closed"
        if self.conn.their_state is h11.SEND_BODY:  # even when answered early: the rest must come
            return "body"
        if self.cycle is not None and not self.cycle.response_complete:
            return "busy"
        if self.conn.their_state is h11.IDLE:
            return "head" if self.conn.trailing_data[0] else "idle"
        return "busy"  # a request whole and answered, the next not yet begun: uvicorn moves on at once

    def set_timer(self) -> None:
        """Arm the one timer that bounds the current phase. In the body phase each call (a new piece
        of the body) restarts the pause; the head's and the body's totals run from their start."""
        phase, now = self.current_phase(), self.loop.time()
        if phase != self.phase:
            self.phase, self.phase_started = phase, now
        self.cancel_phase_timer()
        if phase == "idle":
            if self.timeout_keep_alive_task is None:  # uvicorn arms it only after an answer
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                    self.timeout_keep_alive_handler)
            return
        self.cancel_keep_alive_timer()
        limits = self.limits
        if phase == "head":
            delay = self.phase_started + limits.head_timeout - now
            why = f"request line and headers not received within {limits.head_timeout:g} s"
        elif phase == "body":
            delay = self.phase_started + limits.body_timeout - now
            why = f"request body not received within {limits.body_timeout:g} s"
            if limits.body_idle_timeout < delay:
                delay = limits.body_idle_timeout
                why = f"no bytes of the request body for {limits.body_idle_timeout:g} s"
        else:
            return
        self.phase_timer = self.loop.call_later(max(delay, 0.0), self.timed_out, why)

    def timed_out(self, why: str) -> None:
        self.phase_timer = None
        if self.phase == "body" and self.flow.read_paused:  # the server stopped reading, not the client
            self.set_timer()
            return
        self.answer_and_close(408, why)

    def cancel_phase_timer(self) -> None:
        if self.phase_timer is not None:
            self.phase_timer.cancel()
            self.phase_timer = None

    def cancel_keep_alive_timer(self) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def answer_and_close(self, status: int, message: str) -> None:
        """Answer ``{"error": message}`` with ``status``, unless an answer has begun, and close. An
        application still reading the request sees the client gone, and its answer goes nowhere."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            headers, body = error_response(message)
            response = h11.Response(status_code=status, headers=headers + [_CLOSE],
                                    reason=STATUS_PHRASES[status])
            for event in (response, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        self.transport.close()

    # -- the cap on open connections ------------------------------------------------------------

    def close_idle_beyond_cap(self) -> bool:
        """Close the longest-idle connections while more than ``max_connections`` are open; True if
        the server is still over the cap (no other connection is idle)."""
        cap = self.limits.max_connections
        if len(self.connections) <= cap:  # the set also holds connections closing: an upper bound
            return False
        open_ = [c for c in self.connections if isinstance(c, BoundedH11Protocol)
                 and not c.transport.is_closing()]
        excess = len(open_) - cap
        if excess <= 0:
            return False
        idle = [c for c in open_ if c is not self and c.current_phase() == "idle"]
        for connection in heapq.nsmallest(excess, idle, key=lambda c: c.became_idle):
            connection.timeout_keep_alive_handler()  # closed as uvicorn closes an idle connection
        return excess > len(idle)

    async def answer_within_cap(self, scope, receive, send) -> None:
        """The application, unless the server is over the cap with nothing idle to close: then 503.
        Either answers once the request's body is in."""
        send = self.after_the_body(receive, send)
        if self.close_idle_beyond_cap():
            headers, body = error_response(f"server busy: {self.limits.max_connections} connections "
                                           f"open and none idle; try again")
            await send({"type": "http.response.start", "status": 503, "headers": headers + [_CLOSE]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.application(scope, receive, send)

    # -- answers after the request body ---------------------------------------------------------

    def after_the_body(self, receive, send):
        """``send``, holding an answer back while the rest of its request's body is read and dropped
        (see the class's docstring); an answer the body is not all read for closes the connection."""
        async def send_after_the_body(message) -> None:
            if message["type"] == "http.response.start" and self.conn.their_state is h11.SEND_BODY:
                headers = list(message.get("headers", []))
                if not await self.dropped_the_body(receive) and _CLOSE not in headers:
                    message = {**message, "headers": headers + [_CLOSE]}
            await send(message)
        return send_after_the_body

    async def dropped_the_body(self, receive) -> bool:
        """Read and drop the rest of the request body: True once it is all in. False, having read
        nothing, if the client waits to be asked for it (``Expect: 100-continue``) or declares it
        longer than ``max_discard_bytes``; False if it goes on beyond that, or the connection is
        gone (timed out, or the client left)."""
        declared = dict(self.scope["headers"]).get(b"content-length", b"0")  # digits: h11 checked
        if self.cycle.waiting_for_100_continue or int(declared) > self.limits.max_discard_bytes:
            return False
        dropped = 0
        while dropped <= self.limits.max_discard_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return False
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False
