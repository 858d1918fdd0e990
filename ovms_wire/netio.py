"""Socket I/O for the load users' connections: cooperative under gevent, blocking otherwise.

A connection's calls go through ``begin(timeout)``, ``sendall``, ``recv`` and ``end()``; a call past its
deadline raises :class:`Deadline` from its next wait. Under gevent (Locust patches the socket module) a
plaintext socket is an OS socket in non-blocking mode whose waits go straight to gevent's hub, with one
io watcher per direction made once and one reusable timer for deadlines: gevent's socket wrapper costs a
try-read, a fresh timer and some Python more per call. TLS sockets, and everything outside gevent, use
the standard library's calls (gevent makes those cooperative too).
"""

from __future__ import annotations

import _socket
import socket
import ssl
import sys
import time

__all__ = ["Deadline", "Endpoint", "open_io"]


class Deadline(Exception):
    """A call's deadline passed (raised inside a connection's calls only)."""


def _gevent_patched() -> bool:
    """Is the socket module gevent's (Locust patches it)? Then waits go to gevent's hub directly."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("socket"))


class _BlockingIO:
    """Plain blocking socket calls; a call's deadline bounds each read and write."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline: float | None = None
        self.reply_due = False

    def begin(self, timeout: float | None) -> None:
        self.deadline = time.monotonic() + timeout if timeout else None
        self.sock.settimeout(timeout)

    def end(self) -> None:
        self.deadline = None
        self.reply_due = False

    def _left(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Deadline()
            self.sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise Deadline() from None

    def recv(self) -> bytes:
        self._left()
        try:
            return self.sock.recv(262144)
        except TimeoutError:
            raise Deadline() from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _GeventIO:
    """Under gevent, for a plaintext connection: a non-blocking OS socket whose waits go straight to the hub
    (one io watcher per direction, made once), and one reusable timer for the calls' deadlines. After a
    request is written the reply cannot be there yet, so the first read waits before it reads; gevent's
    socket wrapper would try a read first, fail, then wait: a syscall and some Python more per request.

    The timer is a libev timer re-armed with ``again`` for each call. A stopped libev timer started again
    resumes with what was left of it (ev_timer_stop keeps the remaining time), so a gevent Timeout
    restarted call after call goes off one timeout after its *first* start, in the middle of some later
    call: every call then failed with DEADLINE_EXCEEDED once per timeout, and every call after a deadline
    at once. ``again`` on a repeating timer arms it for its whole period from now."""

    def __init__(self, sock: socket.socket):
        from gevent import get_hub, getcurrent

        self.hub = get_hub()
        self._getcurrent = getcurrent
        self.raw = _socket.socket(fileno=sock.detach())
        self.raw.setblocking(False)
        fd = self.raw.fileno()
        self.readable = self.hub.loop.io(fd, 1)
        self.writable = self.hub.loop.io(fd, 2)
        self.timer = None   # a libev timer of ``seconds`` (repeating, so that ``again`` re-arms it in full)
        self.seconds: float | None = None
        self.reply_due = False

    def begin(self, timeout: float | None) -> None:
        if timeout != self.seconds:
            if self.timer is not None:
                self.timer.close()
            self.timer = self.hub.loop.timer(timeout, timeout) if timeout else None
            self.seconds = timeout
        if self.timer is not None:
            self.timer.again(self._getcurrent().throw, Deadline)

    def end(self) -> None:
        if self.timer is not None:
            self.timer.stop()
        self.reply_due = False

    def sendall(self, data: bytes) -> None:
        raw, size = self.raw, len(data)
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        if sent < size:
            view = memoryview(data)
            while sent < size:
                self.hub.wait(self.writable)
                try:
                    sent += raw.send(view[sent:])
                except BlockingIOError:
                    pass

    def recv(self) -> bytes:
        if self.reply_due:   # just sent: wait first
            self.reply_due = False
            self.hub.wait(self.readable)
        while True:
            try:
                return self.raw.recv(262144)
            except BlockingIOError:
                self.hub.wait(self.readable)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        self.readable.close()
        self.writable.close()
        try:
            self.raw.close()
        except OSError:
            pass


def open_io(sock: socket.socket) -> _BlockingIO | _GeventIO:
    """The I/O for a connected socket (which it then owns)."""
    if not isinstance(sock, ssl.SSLSocket) and _gevent_patched():
        return _GeventIO(sock)
    return _BlockingIO(sock)


class Endpoint:
    """Where a connection goes (``host:port``, TLS, connect timeout, user agent), and how its socket is opened."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, connect_timeout: float = 10.0,
                 user_agent: str = "ovms-locust-bench"):
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.connect_timeout = connect_timeout
        self.user_agent = user_agent
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.connections = 0   # how many times it connected (a reconnect is visible to tests)

    def open_socket(self) -> socket.socket:
        """A connected TCP socket (no Nagle), TLS-wrapped if the endpoint has a context; closed on failure."""
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.server_hostname)
            except BaseException:
                sock.close()
                raise
        return sock
