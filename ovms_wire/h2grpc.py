"""Unary gRPC over one HTTP/2 connection, framed in Python on a plain socket.

Why not grpcio: under gevent, a grpcio call cost the load generator about 300 us of CPU and added
about 250 us of latency (a poller thread hands every completion to the hub). Here a request whose
bytes were serialized before the test is two frames written with one ``send``, and its reply is
parsed from one ``recv`` (bench/clients.md has the measurements). Under gevent (Locust patches the
socket module) a plaintext connection waits on the hub directly; otherwise, and for TLS, the calls
are the standard library's, which gevent makes cooperative.

What it implements of HTTP/2 (RFC 9113) and gRPC's HTTP/2 mapping, client side, one stream at a
time: the preface and SETTINGS exchange; HEADERS with a header block encoded once per method
(literals without indexing, so the encoder keeps no state); DATA split to the peer's frame size and
held to its flow-control windows; WINDOW_UPDATEs for what it receives; PING acks; GOAWAY; and
RST_STREAM both ways (a call past its deadline is cancelled and the connection kept). Replies are
decoded with ``hpack``; a header block whose decoding left the dynamic table as it was decodes the
same until the table next changes, so it is served from a cache until then. The status is gRPC's:
``grpc-status`` and ``grpc-message`` from the trailers (or a trailers-only reply), else the HTTP
status mapped as gRPC's spec maps it.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass
from urllib.parse import unquote

from hpack import Decoder
from hpack.exceptions import HPACKError

from ovms_wire.netio import Deadline, Endpoint, open_io

__all__ = ["H2Channel", "GrpcCallError", "Status", "timeout_header", "STATUS_NAMES"]

# gRPC status codes (grpc/doc/statuscodes.md)
STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE = 0, 1, 2, 4, 13, 14
# gRPC's HTTP-status mapping for replies without grpc-status (doc/http-grpc-status-mapping.md)
_HTTP_TO_GRPC = {400: INTERNAL, 401: 16, 403: 7, 404: 12, 429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE,
                 504: UNAVAILABLE}

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 5, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 1, 2, 4, 5
MAX_WINDOW = (1 << 31) - 1
RECV_WINDOW = 1 << 30          # we grant this much per stream and top the connection up when half is used
RECV_FRAME = 1 << 20           # the DATA frame size we accept (fewer frames for large replies)
CANCEL_CODE, REFUSED_STREAM_CODE = 0x8, 0x7
_HEAD = struct.Struct(">I")
_FRAME = struct.Struct(">BHBBI")   # length as 1+2 bytes, type, flags, stream id


@dataclass(frozen=True, slots=True)
class Status:
    """A call's outcome: a gRPC status code (0 is OK) and its message."""
    code: int
    message: str = ""

    @property
    def name(self) -> str:
        return STATUS_NAMES[self.code] if 0 <= self.code < len(STATUS_NAMES) else f"CODE_{self.code}"


class GrpcCallError(Exception):
    """A failed call, shown as gRPC shows it: ``UNAVAILABLE: connection refused``."""

    def __init__(self, code: int, message: str):
        self.status = Status(code, message)
        super().__init__(f"{self.status.name}: {message}")

    @property
    def code(self) -> int:
        return self.status.code

    @property
    def details(self) -> str:
        return self.status.message


class _Unprocessed(GrpcCallError):
    """The server did not take the call: a GOAWAY below its stream, or a kept-alive connection that closed
    before any of its reply arrived. Worth one more try on a new connection."""


def _int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK integer (RFC 7541 5.1) with an N-bit prefix, OR-ed into ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = [first | limit], value - limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: int | str, value: str) -> bytes:
    """A literal header field without indexing (RFC 7541 6.2.2): by static-table name index or new name."""
    raw = value.encode("latin-1")
    if isinstance(name, int):
        head = _int(name, 4)
    else:
        n = name.encode("ascii")
        head = b"\x00" + _int(len(n), 7) + n
    return head + _int(len(raw), 7) + raw


def timeout_header(seconds: float) -> str:
    """grpc-timeout: at most 8 digits and a unit."""
    for unit, scale in (("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600)):
        value = int(seconds * scale + 0.999)
        if value < 100_000_000:
            return f"{max(value, 1)}{unit}"
    return "99999999H"


def header_block(path: str, authority: str, tls: bool, timeout: float | None, user_agent: str,
                 extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The request's header block, the same bytes for every call of a method."""
    block = (b"\x83" + (b"\x87" if tls else b"\x86")       # :method POST, :scheme https/http (static table)
             + _literal(4, path) + _literal(1, authority)  # :path, :authority
             + _literal(31, "application/grpc") + _literal("te", "trailers") + _literal(58, user_agent))
    if timeout:
        block += _literal("grpc-timeout", timeout_header(timeout))
    for name, value in extra:
        block += _literal(name.lower(), value)
    return block


class H2Channel(Endpoint):
    """One HTTP/2 connection to ``host:port``, opened on first use and again after it breaks; not shared
    between greenlets (each load user has its own)."""

    def __init__(self, host: str, port: int, *, headers: tuple[tuple[str, str], ...] = (), **endpoint: object):
        super().__init__(host, port, **endpoint)
        self.headers = tuple((name.lower(), value) for name, value in headers)   # custom metadata, every call
        self._blocks: dict[tuple[str, float | None], bytes] = {}
        self.sock: socket.socket | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.next_stream = 1
        self.send_window = 65535       # connection-level, what the peer lets us send
        self.initial_window = 65535    # the peer's per-stream window for new streams
        self.max_frame = 16384         # the peer's SETTINGS_MAX_FRAME_SIZE
        self.received = 0              # DATA bytes received since the last connection WINDOW_UPDATE
        self.goaway_last: int | None = None
        self.buf = b""
        self.decoder = Decoder()
        self.decoder.max_allowed_table_size = 65536
        self._cache: dict[bytes, list] = {}
        self._stream_window = 0        # what the peer lets us send on the stream being sent

    # -- connection ---------------------------------------------------------------------------------
    def connect(self) -> None:
        self.close()
        self._reset_state()
        try:
            sock = self.open_socket()
        except TimeoutError:
            raise GrpcCallError(UNAVAILABLE, f"failed to connect to {self.authority}: timed out") from None
        except ssl.SSLError as exc:   # (and CertificateError)
            raise GrpcCallError(UNAVAILABLE, f"TLS handshake with {self.authority} failed: "
                                             f"{getattr(exc, 'reason', None) or exc}") from None
        except OSError as exc:
            raise GrpcCallError(UNAVAILABLE, f"failed to connect to {self.authority}: "
                                             f"{exc.strerror or exc}") from None
        if self.ssl_context is not None and sock.selected_alpn_protocol() != "h2":
            sock.close()
            raise GrpcCallError(UNAVAILABLE, f"{self.authority} did not agree to HTTP/2 (ALPN h2)")
        settings = struct.pack(">HIHIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, RECV_WINDOW,
                               SETTINGS_MAX_FRAME_SIZE, RECV_FRAME)
        grant = MAX_WINDOW - 65535
        try:
            sock.sendall(PREFACE + self._frame(SETTINGS, 0, 0, settings)
                         + self._frame(WINDOW_UPDATE, 0, 0, _HEAD.pack(grant)))
        except OSError as exc:
            sock.close()
            raise GrpcCallError(UNAVAILABLE, f"connection to {self.authority} failed: {exc}") from None
        self.sock = sock
        self.connections += 1
        self._io = open_io(sock)

    def close(self) -> None:
        if self.sock is not None:
            self._io.close()
            self.sock = None

    @staticmethod
    def _frame(kind: int, flags: int, stream: int, payload: bytes | memoryview = b"") -> bytes:
        n = len(payload)
        return _FRAME.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload

    def _block(self, path: str, timeout: float | None) -> bytes:
        key = (path, timeout)
        block = self._blocks.get(key)
        if block is None:
            tls = self.ssl_context is not None
            block = self._blocks[key] = header_block(path, self.authority, tls, timeout, self.user_agent,
                                                     self.headers)
        return block

    # -- a call -------------------------------------------------------------------------------------
    def unary(self, path: str, message: bytes, timeout: float | None = None, want_reply: bool = False
              ) -> tuple[Status, int, bytes | None]:
        """Send one serialized request message; return its status, the reply's message length, and the
        reply's message bytes if ``want_reply``. Transport failures are returned as a status too."""
        try:
            try:
                return self._unary(path, message, timeout, want_reply)
            except _Unprocessed:   # once more, on a new connection (as HTTP clients do for a reused one)
                return self._unary(path, message, timeout, want_reply)
        except GrpcCallError as exc:
            return exc.status, 0, None

    def _unary(self, path: str, message: bytes, timeout: float | None, want_reply: bool
               ) -> tuple[Status, int, bytes | None]:
        if self.sock is None or (self.goaway_last is not None) or self.next_stream > MAX_WINDOW:
            self.connect()
        io = self._io
        sid = self.next_stream
        self.next_stream = sid + 2
        block = self._block(path, timeout)
        n = len(message) + 5
        prefix = b"\x00" + _HEAD.pack(len(message))
        head = _FRAME.pack(len(block) >> 16, len(block) & 0xFFFF, HEADERS, END_HEADERS, sid) + block
        self._expect(want_reply)
        io.begin(timeout)
        try:
            if n <= self.max_frame and n <= self.send_window and n <= self.initial_window:   # the common case
                io.sendall(b"".join((head, _FRAME.pack(n >> 16, n & 0xFFFF, DATA, END_STREAM, sid), prefix,
                                     message)))
                self.send_window -= n
            else:
                io.sendall(head)
                self._send_data(sid, prefix, message)
            io.reply_due = True
            return self._reply(sid)
        except Deadline:
            self._cancel(sid)
            raise GrpcCallError(DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.close()
            lost = _Unprocessed if self._untouched(sid) else GrpcCallError
            raise lost(UNAVAILABLE, f"connection to {self.authority} lost: {exc}") from None
        except BaseException:   # killed mid-call (a stopping user): the stream is in an unknown state
            self.close()
            raise
        finally:
            io.end()

    def _send_data(self, sid: int, prefix: bytes, message: bytes) -> None:
        """DATA frames within the peer's frame size and both windows, waiting for WINDOW_UPDATEs. The payload
        is the 5-byte prefix then the message, sliced without copying the message."""
        view = memoryview(message)
        total, pos = len(message) + 5, 0
        self._stream_window = self.initial_window
        while pos < total and not self._done:   # done: the server replied (and may have reset) early
            allowed = min(self.send_window, self._stream_window, self.max_frame, total - pos)
            if allowed <= 0:
                self._read_once(sid)   # WINDOW_UPDATE, SETTINGS, PING: handled there
                continue
            out: list[bytes | memoryview] = []
            while allowed > 0:
                end = pos + allowed
                out.append(_FRAME.pack(allowed >> 16, allowed & 0xFFFF, DATA, END_STREAM if end == total else 0, sid))
                if pos < 5:
                    out.append(prefix[pos:min(end, 5)])
                if end > 5:
                    out.append(view[max(pos - 5, 0):end - 5])
                self.send_window -= allowed
                self._stream_window -= allowed
                pos = end
                allowed = min(self.send_window, self._stream_window, self.max_frame, total - pos)
            self._io.sendall(b"".join(out))
        if pos < total and self._rst is None:   # replied before the whole request: close our side too
            self._io.sendall(self._frame(RST_STREAM, 0, sid, _HEAD.pack(0)))

    def _cancel(self, sid: int) -> None:
        try:
            self._io.sendall(self._frame(RST_STREAM, 0, sid, _HEAD.pack(CANCEL_CODE)))
        except (OSError, Deadline):
            self.close()

    def _expect(self, want_reply: bool) -> None:
        """Ready for a new stream's reply (before its request goes out: a reply may come early)."""
        self._headers, self._trailers, self._length = None, None, 0
        self._chunks: list[bytes] | None = [] if want_reply else None
        self._done = False
        self._rst: int | None = None

    def _reply(self, sid: int) -> tuple[Status, int, bytes | None]:
        while not self._done:
            self._read_once(sid)
        if self._rst is not None:
            code = UNAVAILABLE if self._rst == REFUSED_STREAM_CODE else CANCELLED if self._rst == CANCEL_CODE \
                else INTERNAL
            return Status(code, f"stream reset by the server (HTTP/2 error {self._rst})"), 0, None
        status = self._status()
        length = max(self._length - 5, 0)
        if self._chunks is None:
            return status, length, None
        data = b"".join(self._chunks)
        return status, length, data[5:] if len(data) >= 5 else b""

    def _status(self) -> Status:
        headers = dict(self._headers or ())
        trailers = dict(self._trailers or ()) if self._trailers is not None else headers
        http = headers.get(b":status", b"")
        if http != b"200":
            code = int(http) if http.isdigit() else 0
            return Status(_HTTP_TO_GRPC.get(code, UNKNOWN), f"HTTP status {code or 'missing'} from the server")
        raw = trailers.get(b"grpc-status")
        if raw is None:
            return Status(INTERNAL, "the server's reply had no grpc-status")
        message = trailers.get(b"grpc-message", b"")
        return Status(int(raw) if raw.isdigit() else UNKNOWN, unquote(message.decode("utf-8", "replace")))

    def _untouched(self, sid: int) -> bool:
        """Did the connection carry calls before this one, and has nothing of this one's reply come back?"""
        return sid > 1 and self._headers is None and not self._length and not self._done

    def _read_once(self, sid: int) -> None:
        """Read once from the socket and handle every whole frame in the buffer."""
        data = self._io.recv()
        if not data:
            lost = _Unprocessed if self._untouched(sid) else GrpcCallError
            self.close()
            raise lost(UNAVAILABLE, f"{self.authority} closed the connection")
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        while end - pos >= 9:
            hi, lo, kind, flags, stream = _FRAME.unpack_from(buf, pos)
            length = (hi << 16) | lo
            if end - pos - 9 < length:
                break
            start = pos + 9
            pos = start + length
            stream &= 0x7FFFFFFF
            if kind == DATA:
                self._on_data(stream, flags, buf, start, length, sid)
            elif kind == HEADERS or kind == CONTINUATION:
                self._on_headers(stream, flags, buf[start:pos], sid, kind)
            else:
                self._on_control(kind, flags, stream, buf[start:pos], sid)
        self.buf = buf[pos:] if pos < end else b""

    def _on_data(self, stream: int, flags: int, buf: bytes, start: int, length: int, sid: int) -> None:
        self.received += length
        if self.received > RECV_WINDOW:   # keep the connection window open (streams got 1 GiB each)
            self._io.sendall(self._frame(WINDOW_UPDATE, 0, 0, _HEAD.pack(self.received)))
            self.received = 0
        if stream != sid:
            return   # a late reply to a cancelled call
        if flags & PADDED:
            pad = buf[start]
            start, length = start + 1, length - 1 - pad
        self._length += length
        if self._chunks is not None:
            self._chunks.append(buf[start:start + length])
        if flags & END_STREAM:
            self._done = True

    def _on_headers(self, stream: int, flags: int, payload: bytes, sid: int, kind: int) -> None:
        if kind == HEADERS:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if flags & PRIORITY:
                payload = payload[5:]
            self._hstream, self._hflags, self._hblock = stream, flags, payload
        else:
            self._hblock += payload
        if not flags & END_HEADERS:
            return
        block, stream, hflags = self._hblock, self._hstream, self._hflags
        fields = self._decode(block)   # every block is decoded: the table must follow the server's
        if stream != sid:
            return
        if self._headers is None:
            self._headers = fields
        else:
            self._trailers = fields
        if hflags & END_STREAM:
            self._done = True

    def _decode(self, block: bytes) -> list:
        fields = self._cache.get(block)
        if fields is not None:
            return fields
        table = self.decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), id(entries[0]) if entries else 0, table.maxsize)
        try:
            fields = self.decoder.decode(block, raw=True)
        except HPACKError as exc:
            self.close()
            raise GrpcCallError(INTERNAL, f"bad header block from {self.authority}: {exc}") from None
        if (len(entries), id(entries[0]) if entries else 0, table.maxsize) == before:
            if len(self._cache) < 256:   # it left the table alone: the same bytes decode the same until it changes
                self._cache[block] = fields
        elif self._cache:
            self._cache.clear()   # the table changed: cached blocks may now mean other fields
        return fields

    def _on_control(self, kind: int, flags: int, stream: int, payload: bytes, sid: int) -> None:
        if kind == SETTINGS:
            if flags & ACK:
                return
            for i in range(0, len(payload) - 5, 6):
                key, value = struct.unpack_from(">HI", payload, i)
                if key == SETTINGS_INITIAL_WINDOW_SIZE:
                    delta = value - self.initial_window
                    self.initial_window = value
                    self._stream_window += delta
                elif key == SETTINGS_MAX_FRAME_SIZE:
                    self.max_frame = value
                elif key == SETTINGS_HEADER_TABLE_SIZE:
                    pass   # our encoder never indexes
            self._io.sendall(self._frame(SETTINGS, ACK, 0))
        elif kind == WINDOW_UPDATE:
            inc = _HEAD.unpack(payload)[0] & 0x7FFFFFFF
            if stream == 0:
                self.send_window += inc
            elif stream == sid:
                self._stream_window += inc
        elif kind == PING:
            if not flags & ACK:
                self._io.sendall(self._frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            # after a whole reply a reset (NO_ERROR: "stop sending", RFC 9113 8.1) changes nothing
            if stream == sid and not self._done:
                self._rst = _HEAD.unpack(payload)[0]
                self._done = True
        elif kind == GOAWAY:
            last, error = struct.unpack_from(">II", payload)
            self.goaway_last = last & 0x7FFFFFFF
            if sid > self.goaway_last:   # our stream was not processed (RFC 9113 6.8): safe to try again
                debug = payload[8:].decode("utf-8", "replace")
                raise _Unprocessed(UNAVAILABLE, f"{self.authority} is closing the connection (GOAWAY {error}"
                                                 f"{': ' + debug if debug else ''})")
        elif kind == PUSH_PROMISE:
            self.close()
            raise GrpcCallError(INTERNAL, f"{self.authority} sent PUSH_PROMISE after push was disabled")
