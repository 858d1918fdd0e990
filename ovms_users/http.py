"""HTTP for the REST protocols outside the hot path: metadata, listing, TLS contexts, error mapping."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ovms_users.errors import OptionError, ServerError
from ovms_users.options import BenchOptions

__all__ = ["HttpTarget", "HttpStatusError", "ssl_context", "error_message"]


class HttpStatusError(Exception):
    """A failed HTTP request as the request event reports it: ``HTTP 404: Model ... not found``."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


def error_message(body: bytes, limit: int = 300) -> str:
    """The server's own words: the ``error`` of a JSON body, or the start of any other body."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return doc["error"]
    except (ValueError, UnicodeDecodeError):
        pass
    text = body[:limit].decode("utf-8", errors="replace").strip()
    return " ".join(text.split()) or "(empty body)"


def ssl_context(opts: BenchOptions) -> ssl.SSLContext:
    root, cert, key = opts.tls_files
    for path, option in ((root, "--ssl_ca"), (cert, "--ssl_cert"), (key, "--ssl_key")):
        if path is not None and not path.is_file():
            raise OptionError("--certs_dir" if opts.certs_dir else option, f"cannot read {path}: no such file")
    if (cert is None) != (key is None):
        raise OptionError("--ssl_cert/--ssl_key", "give both the client certificate and its key, or neither")
    try:
        ctx = ssl.create_default_context(cafile=str(root) if root else None)
        if cert and key:
            ctx.load_cert_chain(str(cert), str(key))
        if getattr(opts, "tls_no_verify", False):   # --tls_no_verify: encrypted, but anyone may be the server
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    except (ssl.SSLError, OSError) as exc:
        raise OptionError("--certs_dir" if opts.certs_dir else "--ssl_ca", f"the TLS files do not load: {exc}") \
            from None
    return ctx


@dataclass
class HttpTarget:
    """``scheme://host:port`` plus the TLS context; blocking calls (cooperative under Locust's gevent).

    With ``options``, every call carries its ``--header`` headers, and a certificate the TLS check refuses
    is a :class:`ServerError` saying what to change."""
    base_url: str
    context: ssl.SSLContext | None
    timeout: float = 10.0
    options: BenchOptions | None = None

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.options.headers) if self.options is not None else {}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout, context=self.context) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ssl.SSLCertVerificationError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError) and self.options is not None:
                from ovms_users.security import verification_error
                parsed = urllib.parse.urlsplit(self.base_url)
                raise verification_error(parsed.hostname or "", parsed.port or 443, reason, self.options,
                                         timeout=min(timeout or self.timeout, 5.0)) from None
            raise
        except http.client.RemoteDisconnected:
            raise   # a ConnectionResetError: the server closed the connection (restarting?); callers may retry
        except (http.client.BadStatusLine, http.client.LineTooLong) as exc:
            line = exc.args[0] if exc.args else ""
            what = "with HTTP/2 frames (is this a gRPC port?)" if isinstance(line, str) and \
                line.startswith("\x00\x00") else f"with something that is not HTTP/1.1 ({str(exc)[:60]!r})"
            raise ServerError(f"{self.base_url} answered {what}; check --host (give the REST port) and --api") \
                from None

    def json(self, method: str, path: str, body: Any = None, timeout: float | None = None,
             ok: tuple[int, ...] = (200,)) -> Any:
        status, raw = self.call(method, path, body, timeout)
        if status not in ok:
            raise HttpStatusError(status, error_message(raw))
        try:
            return json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            raise ServerError(f"{self.base_url}{path} answered {status} with a body that is not JSON: "
                              f"{error_message(raw, 120)!r}; is this a model server's REST port? check --host and "
                              "--api") from None
