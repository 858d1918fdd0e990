"""Security of the client side: extra request headers (--header), web credentials, TLS verification errors.

- ``--header "Name: value"`` (repeatable; several in one value separated by ``;`` before the next
  ``Name:``, or a JSON list ``["A: x", "B: y"]`` as configargparse reads ``LOCUST_HEADER``): sent on every
  REST request and as gRPC metadata (lower-case names) on every gRPC call. Names that the protocols
  set themselves are refused, and a header's value is never printed (``Name: ***``).
- TLS: verification is on unless ``--tls_no_verify``; a server whose certificate is not trusted or
  not valid for the host name fails before any load with one line saying what to change.

Imports neither Locust nor gRPC: ``ovms-bench`` and the tests use it as is.
"""

from __future__ import annotations

import json
import re
import ssl
from typing import Any

from ovms_users.errors import OptionError, ServerError
from ovms_wire.netio import Endpoint

__all__ = ["parse_headers", "parse_credentials", "verification_error", "check_certificate", "NO_VERIFY_WARNING"]

#: printed once at the start of a run with --tls_no_verify
NO_VERIFY_WARNING = ("ovms: warning: --tls_no_verify: the server's certificate is not checked; anyone on the path "
                     "can read and change the traffic (use --ssl_ca/--certs_dir to trust a private CA instead)")

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_NAME = re.compile(rf"^{_TOKEN}$")
# a ';' that starts the next header: followed by 'Name:' (a ';' inside a value, as in a Cookie, stays)
_SPLIT = re.compile(rf";\s*(?={_TOKEN}\s*:)")
#: set by the transports or the protocols, or meaningless per request: a --header may not set them
_RESERVED = {
    "host": "it comes from --host",
    "content-length": "the body's length is set per request",
    "transfer-encoding": "the transports frame the body themselves",
    "connection": "a hop-by-hop header the transports manage",
    "keep-alive": "a hop-by-hop header the transports manage",
    "proxy-connection": "a hop-by-hop header the transports manage",
    "upgrade": "a hop-by-hop header the transports manage",
    "te": "gRPC sets 'te: trailers' itself",
    "content-type": "the protocol sets it (application/grpc, application/json, ...)",
    "user-agent": "the transports send their own",
    "inference-header-content-length": "the KServe binary protocol sets it per request",
}


def _items(value: Any) -> list[str]:
    """The raw 'Name: value' items of --header values (a string, a list of them, or a JSON list)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in _items(v)]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, list):
            return [item for v in doc for item in _items(v)]
    return [part for part in _SPLIT.split(text) if part.strip()]


def parse_headers(value: Any) -> tuple[tuple[str, str], ...]:
    """``--header`` values as (name, value) pairs, checked; an error never shows a value."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in _items(value):
        if item.lstrip().startswith(":"):
            raise OptionError("--header", "pseudo-headers (:authority, :path, ...) may not be set; give 'Name: value'")
        name, colon, val = item.partition(":")
        name, val = name.strip(), val.strip()
        if not colon or not name:
            shown = name[:40] if colon else "(no ':')"
            raise OptionError("--header", f"give 'Name: value' items, e.g. --header 'Authorization: Bearer TOKEN' "
                                          f"(got {shown!r})")
        if name.startswith(":") or not _NAME.match(name):
            raise OptionError("--header", f"{name[:40]!r} is not a header name (letters, digits and -, no "
                                          "pseudo-headers such as :authority)")
        lower = name.lower()
        if lower in _RESERVED:
            raise OptionError("--header", f"{name} may not be set: {_RESERVED[lower]}")
        if lower.startswith("grpc-"):
            raise OptionError("--header", f"{name} may not be set: grpc-* names are reserved by gRPC")
        if lower.endswith("-bin"):
            raise OptionError("--header", f"{name}: binary (-bin) gRPC metadata is not supported; use a text header")
        if not val:
            raise OptionError("--header", f"{name} has an empty value")
        if any(c in val for c in "\r\n\x00"):
            raise OptionError("--header", f"the value of {name} holds a line break or NUL; give it on one line")
        if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F or ord(c) > 0x7E for c in val):
            raise OptionError("--header", f"the value of {name} holds a control or non-ASCII character; gRPC "
                                          "metadata and HTTP headers take printable ASCII")
        if lower in seen:
            raise OptionError("--header", f"{name} is given twice")
        seen.add(lower)
        out.append((name, val))
    return tuple(out)


def parse_credentials(text: str) -> tuple[str, str]:
    """--web_credentials ``USER:PASSWORD`` (the password may hold ':'); an error never shows the password."""
    user, colon, password = str(text or "").partition(":")
    if not colon or not user.strip() or not password:
        raise OptionError("--web_credentials", "give USER:PASSWORD (a user name, ':', a password), e.g. "
                                               "LOCUST_WEB_CREDENTIALS=admin:$(openssl rand -hex 12)")
    return user.strip(), password


# -- TLS verification ---------------------------------------------------------------------------------------------

def _names_in_certificate(host: str, port: int, opts: Any, alpn: list[str] | None, timeout: float) -> list[str]:
    """The DNS names and addresses the server's certificate is valid for (fetched without checking it)."""
    from dataclasses import replace

    from ovms_users.http import ssl_context
    try:
        from cryptography import x509
        ctx = ssl_context(replace(opts, tls_no_verify=True))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        with Endpoint(host, port, ssl_context=ctx, connect_timeout=timeout).open_socket() as sock:
            der = sock.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            return [str(n) for n in san.get_values_for_type(x509.DNSName)] + \
                [str(a) for a in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            return [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    except Exception:   # only a hint for the message: whatever fails, the message goes without it
        return []


def verification_error(host: str, port: int, exc: ssl.SSLCertVerificationError, opts: Any,
                       alpn: list[str] | None = None, timeout: float = 5.0) -> ServerError:
    """One line: why the server's certificate was refused, and what to change."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    why = (getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)).rstrip(".")
    if getattr(exc, "verify_code", None) == 62 or "hostname mismatch" in why.lower() \
            or "ip address mismatch" in why.lower():
        names = _names_in_certificate(host, port, opts, alpn, timeout)
        valid = f" (it is valid for {', '.join(names)})" if names else ""
        return ServerError(f"TLS: the certificate of {where} does not match the name {host!r}{valid}; connect by a "
                           "name the certificate holds (--host), or skip the check with --tls_no_verify")
    return ServerError(f"TLS: the certificate of {where} is not trusted ({why}); give its CA with --ssl_ca FILE "
                       "(or --certs_dir DIR with server.pem), or skip the check with --tls_no_verify")


def check_certificate(host: str, port: int, opts: Any, alpn: list[str] | None = None,
                      timeout: float = 5.0) -> bool:
    """One TLS handshake with verification, before anything else talks to the server.

    Raises :class:`ServerError` when the certificate is refused; returns True when the handshake went
    through, False when it could not be tried (server unreachable, or another TLS failure, which the
    caller's own request reports in its words).
    """
    from ovms_users.http import ssl_context
    if getattr(opts, "tls_no_verify", False):
        return True
    ctx = ssl_context(opts)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    try:
        with Endpoint(host, port, ssl_context=ctx, connect_timeout=timeout).open_socket():
            return True
    except ssl.SSLCertVerificationError as exc:
        raise verification_error(host, port, exc, opts, alpn, timeout) from None
    except (OSError, ValueError):
        return False
