"""POST over one keep-alive HTTP/1.1 connection, with the request head built once per path and headers.

The REST users' transport. A request is its cached head (request line, Host, User-Agent, the
caller's headers), its Content-Length and its body, written with one ``send``; the reply's head is
parsed for what a client must know (status, Content-Length or chunked, Connection: close) and its
body read whole. About a third of geventhttpclient's CPU per small request (bench/clients.md).
Connections are opened on first use and again after the server closes one; a reused connection
found closed before any byte of the reply is retried once on a new one, as HTTP clients do for the
race with an idle timeout. Sockets come from :mod:`ovms_wire.netio` (cooperative under gevent).
"""

from __future__ import annotations

import ssl

from ovms_wire.netio import Deadline, Endpoint, open_io

__all__ = ["Http1Connection", "HttpProtocolError"]

_SMALL = 65536   # bodies up to this size are joined to the head: one send


class HttpProtocolError(Exception):
    """A reply that is not HTTP/1.1 as a client can read it."""


class _Closed(Exception):
    """The server closed the connection; ``early`` if before any byte of the reply."""

    def __init__(self, early: bool):
        self.early = early


class Http1Connection(Endpoint):
    """One HTTP/1.1 connection to ``host:port``; not shared between greenlets (each load user has its own)."""

    def __init__(self, host: str, port: int, **endpoint: object):
        super().__init__(host, port, **endpoint)
        self._heads: dict[tuple[str, int], tuple[dict, bytes]] = {}
        self._io = None
        self._used = 0         # requests on the current connection

    def connect(self) -> None:
        self.close()
        self._io = open_io(self.open_socket())
        self.connections += 1
        self._used = 0

    def close(self) -> None:
        if self._io is not None:
            self._io.close()
            self._io = None

    @property
    def connected(self) -> bool:
        """Whether a connection is open (after a refused connect or a lost one, not until the next request)."""
        return self._io is not None

    def _head(self, path: str, headers: dict[str, str]) -> bytes:
        key = (path, id(headers))
        entry = self._heads.get(key)
        if entry is None or entry[0] is not headers:   # the dict itself is kept, so its id is not reused
            if len(self._heads) > 256:
                self._heads.clear()
            lines = [f"POST {path} HTTP/1.1", f"Host: {self.authority}", f"User-Agent: {self.user_agent}"]
            lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
            entry = self._heads[key] = (headers, ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1"))
        return entry[1]

    def post(self, path: str, headers: dict[str, str], body: bytes, timeout: float | None = None,
             want_body: bool = False) -> tuple[int, int, bytes | None, str | None]:
        """POST ``body``; return (HTTP status, body length, the body if ``want_body`` or the status is not
        200, an error message if there was no reply: refused, reset, timed out, not HTTP)."""
        head = self._head(path, headers) + b"%d\r\n\r\n" % len(body)
        for attempt in (0, 1):
            try:
                if self._io is None:
                    self.connect()
                return self._exchange(head, body, timeout, want_body)
            except _Closed as closed:
                self.close()
                if closed.early and self._used and not attempt:
                    continue   # a kept-alive connection the server had closed: once more on a new one
                return 0, 0, None, "the server closed the connection before its reply was complete"
            except Deadline:
                self.close()
                return 0, 0, None, f"timed out after {timeout:g} s"
            except HttpProtocolError as exc:
                self.close()
                return 0, 0, None, f"not an HTTP/1.1 reply: {exc}"
            except (OSError, ssl.SSLError) as exc:
                self.close()
                return 0, 0, None, f"{type(exc).__name__}: {exc}"
            except BaseException:   # killed mid-call: the connection is in an unknown state
                self.close()
                raise
        raise AssertionError("unreachable")

    def _exchange(self, head: bytes, body: bytes, timeout: float | None, want_body: bool
                  ) -> tuple[int, int, bytes | None, str | None]:
        io = self._io
        io.begin(timeout)
        try:
            try:
                if len(body) <= _SMALL:
                    io.sendall(head + body)
                else:
                    io.sendall(head)
                    io.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                raise _Closed(True) from None
            io.reply_due = True
            status, length, data, keep = self._reply(want_body)
        finally:
            io.end()
        self._used += 1
        if not keep:
            self.close()
        return status, length, data, None

    def _more(self, data: bytes | bytearray, early: bool = False) -> bytearray:
        chunk = self._io.recv()
        if not chunk:
            raise _Closed(early)
        if isinstance(data, bytearray):
            data += chunk
            return data
        return bytearray(data) + chunk

    def _reply(self, want_body: bool) -> tuple[int, int, bytes | None, bool]:
        try:
            data: bytes | bytearray = self._io.recv()
        except ConnectionResetError:
            raise _Closed(True) from None
        if not data:
            raise _Closed(True)
        while True:
            end = data.find(b"\r\n\r\n")
            while end < 0:
                if len(data) > 1 << 20:
                    raise HttpProtocolError("a reply head over 1 MB")
                data = self._more(data)
                end = data.find(b"\r\n\r\n")
            line_end = data.find(b"\r\n")
            version, _, rest = bytes(data[:line_end]).partition(b" ")
            code = rest[:3]
            if not version.startswith(b"HTTP/1.") or not code.isdigit():
                raise HttpProtocolError(repr(bytes(data[:min(line_end, 60)])))
            status = int(code)
            if 100 <= status < 200:   # 100 Continue and other interim replies: the real one follows
                data = data[end + 4:] or self._more(b"")
                continue
            break
        fields = b"\r\n" + bytes(data[line_end + 2:end]).lower()
        keep = version != b"HTTP/1.0"
        i = fields.find(b"\nconnection:")
        if i >= 0:
            value = fields[i + 12:fields.find(b"\r", i + 1) if fields.find(b"\r", i + 1) > 0 else None]
            keep = b"close" not in value if keep else b"keep-alive" in value
        start = end + 4
        if status in (204, 304):
            body_len = 0
        elif (i := fields.find(b"\ntransfer-encoding:")) >= 0 and b"chunked" in fields[i:fields.find(b"\r", i + 1)
                                                                                    if fields.find(b"\r", i + 1) > 0
                                                                                    else None]:
            return self._chunked(data, start, status, want_body, keep)
        elif (i := fields.find(b"\ncontent-length:")) >= 0:
            j = fields.find(b"\r", i + 1)
            try:
                body_len = int(fields[i + 16:j if j > 0 else None])
            except ValueError:
                raise HttpProtocolError("a Content-Length that is not a number") from None
        else:   # the body runs to the end of the connection
            while True:
                try:
                    data = self._more(data)
                except _Closed:
                    break
            body = bytes(data[start:])
            return status, len(body), body if want_body or status != 200 else None, False
        while len(data) - start < body_len:
            data = self._more(data)
        if len(data) - start > body_len:   # bytes after the reply: not ours to guess at
            keep = False
        body = bytes(data[start:start + body_len]) if want_body or status != 200 else None
        return status, body_len, body, keep

    def _chunked(self, data: bytes | bytearray, pos: int, status: int, want_body: bool, keep: bool
                 ) -> tuple[int, int, bytes | None, bool]:
        parts, total = [], 0
        while True:
            nl = data.find(b"\r\n", pos)
            while nl < 0:
                data = self._more(data)
                nl = data.find(b"\r\n", pos)
            try:
                size = int(bytes(data[pos:nl]).split(b";", 1)[0], 16)
            except ValueError:
                raise HttpProtocolError("a chunk size that is not hexadecimal") from None
            pos = nl + 2
            if size == 0:   # the last chunk, then trailer fields up to an empty line
                while True:
                    nl = data.find(b"\r\n", pos)
                    while nl < 0:
                        data = self._more(data)
                        nl = data.find(b"\r\n", pos)
                    if nl == pos:
                        pos += 2
                        break
                    pos = nl + 2
                break
            while len(data) < pos + size + 2:
                data = self._more(data)
            if want_body or status != 200:
                parts.append(bytes(data[pos:pos + size]))
            total += size
            pos += size + 2
        if len(data) > pos:
            keep = False
        return status, total, b"".join(parts) if want_body or status != 200 else None, keep
