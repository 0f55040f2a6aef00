"""
The HTTP plumbing shared by the Langfuse and Stripe emulators.

Each emulator is a plain object with a ``handle(request) -> Response`` method;
``EmulatorServer`` serves it over real HTTP on a thread so that the real client
libraries can talk to it. Rate limiting and fault injection live here because
both providers need the same knobs and tests switch them on per run.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def form(self) -> dict[str, list[str]]:
        """Parse an ``application/x-www-form-urlencoded`` body (what Stripe takes)."""
        return parse_qs(self.body.decode(), keep_blank_values=True)


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serialisable, or None for an empty body
    headers: dict[str, str] = field(default_factory=dict)
    # Send only the first half of the body, with a matching Content-Length:
    # a proxy or a provider cut off mid-answer, the status already sent.
    cut: bool = False

    def encode(self) -> bytes:
        payload = b"" if self.body is None else json.dumps(self.body).encode()
        return payload[: len(payload) // 2] if self.cut else payload


class RESET:
    """Sentinel response: drop the connection without answering."""


class Emulator(Protocol):
    def handle(self, request: Request) -> Response | type[RESET]: ...


@dataclass
class Faults:
    """
    Faults an emulator injects, each as the fraction of requests it hits.

    ``malformed`` is interpreted by the emulator (e.g. Langfuse corrupts items
    in a page); the rest apply to any request before it reaches the emulator.
    A seed makes a run reproducible.
    """

    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_reset: float = 0.0
    rate_slow: float = 0.0
    slow_seconds: float = 0.5
    rate_malformed: float = 0.0
    # Answers whose body is cut in half (invalid JSON behind a 200).
    rate_cut_body: float = 0.0
    retry_after: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def roll(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._random.random() < rate


class MinuteRateLimiter:
    """A fixed one-minute window per key, like the providers' per-key limits."""

    def __init__(self, per_minute: int | None = None, clock=time.time) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._windows: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> tuple[bool, int, int]:
        """Count a request; return (allowed, remaining, seconds until reset)."""
        now = self._clock()
        window = int(now // 60)
        reset_in = max(1, int((window + 1) * 60 - now))
        if self.per_minute is None:
            return True, 0, reset_in
        with self._lock:
            start, count = self._windows.get(key, (window, 0))
            if start != window:
                start, count = window, 0
            count += 1
            self._windows[key] = (start, count)
        remaining = max(0, self.per_minute - count)
        return count <= self.per_minute, remaining, reset_in


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, each response
    # waits for the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Request lines would contain query strings; the emulators stay quiet.
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        self.server.requests_served += 1
        try:
            response = self.server.emulator.handle(request)
        except Exception as exc:  # an emulator bug must look like a 500, not hang
            response = Response(500, {"error": {"message": f"emulator error: {exc!r}"}})
        if response is RESET:
            self._reset()
            return
        payload = response.encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send a TCP RST: the
        # client sees "connection reset by peer", as with a dropped proxy.
        self.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.close_connection = True
        self.connection.close()

    do_GET = do_POST = do_DELETE = do_PATCH = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        super().__init__(address, _Handler)
        self.emulator = emulator
        self.requests_served = 0


class EmulatorServer:
    """Serve an emulator on a thread; port 0 picks a free port."""

    def __init__(self, emulator: Emulator, host: str = "127.0.0.1", port: int = 0):
        self.emulator = emulator
        self._server = _Server((host, port), emulator)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests_served(self) -> int:
        return self._server.requests_served

    def start(self) -> EmulatorServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"emulator-{type(self.emulator).__name__}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def apply_common_faults(faults: Faults) -> Response | type[RESET] | None:
    """
    Roll the provider-independent faults for one request.

    Returns what to answer instead of the real response, or None to go on.
    A slow response sleeps and then goes on.
    """
    if faults.roll(faults.rate_reset):
        return RESET
    if faults.roll(faults.rate_slow):
        time.sleep(faults.slow_seconds)
    if faults.roll(faults.rate_5xx):
        return Response(503, None)
    return None
