"""MongoDB export of a run's result: the OVMS client's document (``db_exporter.py``), written once at the end.

The document holds what the OVMS client stored (``opt_<option>`` fields, ``-y`` metadata, the
``model``/``batchsize``/... defaults, ``final_results`` with ``xcli_<key>`` values, ``client_version``,
``execution_date``, ``model_name``, ``model_version``, ``internal_results: []``) plus ``result``, the
whole JSON result document. It is inserted once, after the test, with an ``_id`` chosen before the
first attempt. Every wait is bounded by ``timeout_s`` (server selection, connect, socket, write
concern): a ping (reaching the server, TLS, authentication) takes at most ``timeout_s``, then the
insert, a retry included, at most ``timeout_s``.

When the export fails for any reason, the document goes to a dump file (MongoDB Extended JSON,
relaxed mode, which keeps ``execution_date`` a date and ``_id`` an ObjectId) beside the JSON
result, and :class:`MongoExportError` says what failed and how to load it later with
``ovms-bench db-load``. Loading keeps the ``_id``, so loading twice cannot store two documents.

pymongo (and its ``bson``) are imported only when a document is exported or loaded.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

__all__ = ["MongoExportError", "MongoInputError", "MongoAlreadyLoaded", "MongoTarget", "parse_endpoint",
           "parse_metadata", "build_document", "export", "load_dump", "DEFAULT_COLLECTION", "DUMP_FORMAT",
           "escape_key", "unescape_key", "mask_uri", "mask_options", "mask_argv", "mask_header"]

#: the collection of a MongoDB URI without a ``collection`` option
DEFAULT_COLLECTION = "runs"
#: the ``format`` field of a dump file
DUMP_FORMAT = "ovms-bench MongoDB dump 1"

#: options that never become ``opt_<name>`` fields: the OVMS client's exclusions, and secrets
_EXCLUDED_OPTIONS = frozenset({"db_metadata", "db_endpoint", "quantile_list", "web_auth", "web_credentials"})
#: fields the run sets; ``-y`` may not replace them (the defaults below it may)
_RESERVED_FIELDS = frozenset({"_id", "internal_results", "final_results", "execution_date", "client_version",
                              "model_name", "model_version", "result"})
_FORMS = ("give mongodb://HOST:DATABASE:COLLECTION (the OVMS client's form, HOST may be host:port) or a MongoDB "
          "URI such as mongodb://USER:PASSWORD@HOST:PORT/DATABASE?collection=COLLECTION&authSource=admin")
_SECRET_OPTIONS = ("password", "authmechanismproperties")
# up to the last "@" of the word: a password with an unescaped "@" or "/" is masked whole (too much, never too little)
_URI_PASSWORD = re.compile(r"(mongodb(?:\+srv)?://[^:/?#@\s]*:)\S*@", re.IGNORECASE)


class MongoExportError(Exception):
    """A failed MongoDB export or load; its message is one line: what failed and what to change."""


class MongoInputError(MongoExportError):
    """Bad input (endpoint, metadata, dump file) rather than a database failure."""


class MongoAlreadyLoaded(MongoExportError):
    """The document of a dump is already in the collection (same ``_id``): nothing was written."""

    def __init__(self, message: str, inserted_id: str) -> None:
        super().__init__(message)
        self.inserted_id = inserted_id


@dataclass(frozen=True)
class MongoTarget:
    uri: str          #: what pymongo connects to (may hold a password): never print it
    database: str
    collection: str
    display: str      #: the endpoint as given, any password replaced by ``***``: safe to print and store


def mask_uri(text: str) -> str:
    """``text`` with the password of every MongoDB URI in it replaced by ``***``."""
    return _URI_PASSWORD.sub(r"\1***@", text)


_SECRET_FLAGS = ("--web-auth", "--web_auth", "--web_credentials", "--web-credentials")
#: flags whose values are request headers: shown as their names, each value ``***``
_HEADER_FLAGS = ("--header",)
_HEADER_NAMES = re.compile(r"(?:^|;|\[|,)\s*\"?([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*:")


def mask_header(text: str) -> str:
    """A --header value (one header, several separated by ';', or a JSON list) with every value replaced by ``***``."""
    names = _HEADER_NAMES.findall(str(text))
    return "; ".join(f"{name}: ***" for name in names) if names else "***"


def _flag_of(arg: str, flags: tuple[str, ...]) -> bool:
    """``arg`` is one of ``flags`` or an abbreviation argparse would take for it."""
    return len(arg) > 3 and arg.startswith("--") and any(flag.startswith(arg) for flag in flags)


def mask_argv(argv: list[str]) -> list[str]:
    """A command line with its secrets masked: the values of --web-auth, --web_credentials and --header (names
    kept), and every MongoDB URI's password."""
    out = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        prev = argv[i - 1] if i else ""
        if eq and _flag_of(name, _SECRET_FLAGS):
            arg = name + "=***"
        elif eq and _flag_of(name, _HEADER_FLAGS):
            arg = name + "=" + mask_header(value)
        elif i and _flag_of(prev, _SECRET_FLAGS):
            arg = "***"
        elif i and _flag_of(prev, _HEADER_FLAGS):
            arg = mask_header(arg)
        out.append(mask_uri(arg))
    return out


def mask_options(options: dict) -> dict:
    """Parsed options as a result stores them: every secret value replaced by ``***`` (--header: names kept)."""
    out = dict(options)
    if out.get("db_endpoint"):
        out["db_endpoint"] = mask_uri(str(out["db_endpoint"]))
    for key in ("web_auth", "web_credentials"):
        if out.get(key):
            out[key] = "***"
    if out.get("header"):
        headers = out["header"]
        out["header"] = [mask_header(h) for h in headers] if isinstance(headers, (list, tuple)) \
            else mask_header(headers)
    return out


def _check_database(name: str, shown: str) -> str:
    if not name:
        raise MongoInputError(f"MongoDB endpoint {shown!r} names no database: {_FORMS}")
    bad = sorted(set(name) & set('/\\. "$*<>:|?\x00'))
    if bad:
        hint = " (the collection goes in ?collection=NAME)" if "/" in bad else ""
        raise MongoInputError(f"MongoDB endpoint {shown!r}: the database name {name!r} may not contain "
                              f"{' '.join(repr(c) for c in bad)}{hint}")
    if len(name.encode()) > 63:
        raise MongoInputError(f"MongoDB endpoint {shown!r}: the database name is longer than 63 bytes")
    return name


def _check_collection(name: str, shown: str) -> str:
    if not name or "$" in name or "\x00" in name or name.startswith(("system.", ".")) or name.endswith("."):
        raise MongoInputError(f"MongoDB endpoint {shown!r}: {name!r} is not a usable collection name (not empty, "
                              "no '$', not system.*)")
    return name


def _check_host(host: str, shown: str, srv: bool) -> None:
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:/,\s]+)(?::(\d{1,5}))?", host)
    if not m or (m.group(2) is not None and not 0 < int(m.group(2)) < 65536):
        raise MongoInputError(f"MongoDB endpoint {shown!r}: {host!r} is not HOST or HOST:PORT; {_FORMS}")
    if srv and m.group(2) is not None:
        raise MongoInputError(f"MongoDB endpoint {shown!r}: a mongodb+srv:// URI takes one host name without a port")


def _parse(text: str) -> tuple[MongoTarget, bool]:
    """The target, and whether the endpoint named the collection (a URI may leave it to the default)."""
    text = text.strip()
    shown = mask_uri(text)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("mongodb", "mongodb+srv"):
        raise MongoInputError(f"MongoDB endpoint {shown!r} does not start with mongodb:// or mongodb+srv://: {_FORMS}")
    if scheme == "mongodb" and not any(c in rest for c in "/?@,") and rest.count(":") in (2, 3):
        # the OVMS client's protocol:address:database:collection, generously with a port in the address
        parts = rest.split(":")
        if len(parts) == 3 and parts[1].isdigit():
            raise MongoInputError(f"MongoDB endpoint {shown!r} is ambiguous (is {parts[1]} a port?): give "
                                  "mongodb://HOST:PORT:DATABASE:COLLECTION or a MongoDB URI "
                                  "mongodb://HOST:PORT/DATABASE?collection=COLLECTION")
        host = ":".join(parts[:-2])
        if len(parts) == 4 and not parts[1].isdigit():
            raise MongoInputError(f"MongoDB endpoint {shown!r} has one field too many: {_FORMS}")
        _check_host(host, shown, srv=False)
        return MongoTarget(uri=f"mongodb://{host}", database=_check_database(parts[-2], shown),
                           collection=_check_collection(parts[-1], shown), display=text), True
    netloc, slash, tail = rest.partition("/")
    if "?" in netloc:          # mongodb://host?opts: no database
        netloc, slash, tail = netloc.partition("?")[0], "", ""
    userinfo, at, hosts = netloc.rpartition("@")
    if not hosts:
        raise MongoInputError(f"MongoDB endpoint {shown!r} names no host: {_FORMS}")
    host_list = hosts.split(",")
    if scheme == "mongodb+srv" and len(host_list) != 1:
        raise MongoInputError(f"MongoDB endpoint {shown!r}: a mongodb+srv:// URI takes exactly one host name")
    for host in host_list:
        _check_host(host, shown, srv=scheme == "mongodb+srv")
    if not slash:
        raise MongoInputError(f"MongoDB endpoint {shown!r} names no database: {_FORMS}")
    path, _, query = tail.partition("?")
    database = _check_database(unquote(path), shown)
    collection, kept, shown_opts = None, [], []
    for item in (query.split("&") if query else []):
        key, eq, value = item.partition("=")
        if key.lower() == "collection":
            collection = _check_collection(unquote(value), shown)
            shown_opts.append(item)
            continue
        if not eq:
            raise MongoInputError(f"MongoDB endpoint {shown!r}: URI option {key!r} has no '=value'")
        kept.append(item)
        shown_opts.append(f"{key}=***" if any(s in key.lower() for s in _SECRET_OPTIONS) else item)
    user = userinfo.partition(":")[0]
    shown_userinfo = (f"{user}:***@" if ":" in userinfo else f"{userinfo}@") if at else ""
    uri = f"{scheme}://{netloc}/{path}" + (f"?{'&'.join(kept)}" if kept else "")
    display = f"{scheme}://{shown_userinfo}{hosts}/{path}" + (f"?{'&'.join(shown_opts)}" if shown_opts else "")
    return MongoTarget(uri=uri, database=database, collection=collection or DEFAULT_COLLECTION,
                       display=display), collection is not None


def parse_endpoint(text: str) -> MongoTarget:
    """``mongodb://HOST:DATABASE:COLLECTION`` (the OVMS client's form; HOST may be ``host:port`` here) or a
    MongoDB URI ``mongodb[+srv]://[USER:PASSWORD@]HOST[:PORT][,...]/DATABASE[?OPTIONS]`` whose
    ``collection`` option (removed from what pymongo gets) names the collection, ``runs`` by default."""
    try:
        return _parse(text)[0]
    except MongoInputError as exc:   # the one line names the option to change
        raise MongoInputError(f"--db_endpoint: {exc}") from None


def parse_metadata(items: list[str]) -> dict[str, str]:
    """``key:value`` items (the OVMS client's ``-y``; the value may hold further colons) as a dict."""
    out: dict[str, str] = {}
    for item in items:
        key, colon, value = item.partition(":")
        if not colon or not key:
            raise MongoInputError(f"--db_metadata: item {item!r} is not key:value (e.g. gpu:A100 or note:'a b')")
        if "." in key or key.startswith("$") or "\x00" in key:
            raise MongoInputError(f"--db_metadata: key {key!r}: MongoDB field names may not hold '.' nor start "
                                  "with '$'")
        if key in _RESERVED_FIELDS or key.startswith("opt_"):
            raise MongoInputError(f"--db_metadata: key {key!r} is a field the run sets itself; choose another key")
        out[key] = value
    return out


def escape_key(key: str) -> str:
    """A field name MongoDB accepts everywhere: ``%``, ``.``, NUL and a leading ``$`` percent-encoded (reversible
    with :func:`unescape_key`); ordinary names are unchanged."""
    key = key.replace("%", "%25").replace(".", "%2E").replace("\x00", "%00")
    return "%24" + key[1:] if key.startswith("$") else key


def unescape_key(key: str) -> str:
    return unquote(key)


def _storable(value: Any) -> Any:
    """``value`` with every dict key escaped and every MongoDB URI password masked."""
    if isinstance(value, dict):
        return {escape_key(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v) for v in value]
    if isinstance(value, str):
        return mask_uri(value)
    return value


def _redact_result(result: dict) -> dict:
    """The result with secrets it may carry (Locust's --web-auth, a MongoDB password) removed."""
    out = json.loads(json.dumps(result, default=str))        # a deep copy, as JSON data
    params = out.get("parameters") if isinstance(out.get("parameters"), dict) else {}
    if isinstance(params.get("options"), dict):
        params["options"] = mask_options(params["options"])
    client = params.get("client")
    if isinstance(client, dict) and isinstance(client.get("argv"), list):
        client["argv"] = mask_argv([str(arg) for arg in client["argv"]])
    return _storable(out)


def _option_value(value: Any) -> Any:
    if isinstance(value, list):
        return mask_uri("_".join(str(v) for v in value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return mask_uri(value) if isinstance(value, str) else value


def _batch_sizes(options: dict, result: dict) -> str:
    bs = options.get("bs")
    if isinstance(bs, list):
        return "-".join(str(b) for b in bs)
    sizes = [s for s in re.split(r"[\s,\-]+", str(bs or "")) if s]
    if not sizes:
        sizes = [str(row.get("batch_size")) for row in result.get("by_batch") or [] if isinstance(row, dict)]
    return "-".join(sizes)


def build_document(result: dict, *, options: dict, metadata: dict[str, str], return_code: int,
                   client_version: str) -> dict:
    """The OVMS client's MongoDB document for one run (without ``_id``), plus ``result``: the JSON result."""
    params = result.get("parameters") if isinstance(result.get("parameters"), dict) else {}
    doc: dict[str, Any] = {"internal_results": []}
    doc.update({k: str(v) for k, v in metadata.items()})
    stats = result.get("statistics") or {}
    final = {f"xcli_{k}": v for k, v in stats.items()}
    final["xcli_return_code"] = return_code
    doc["final_results"] = _storable(final)
    now = dt.datetime.now(dt.UTC)
    doc["execution_date"] = now.replace(microsecond=now.microsecond // 1000 * 1000)   # BSON dates hold ms
    doc["client_version"] = client_version
    doc["model_name"] = options.get("model_name") or params.get("model_name") or ""
    doc["model_version"] = options.get("model_version") or params.get("model_version") or ""
    defaults = {"model": doc["model_name"], "batchsize": _batch_sizes(options, result),
                "iterations": options.get("steps_number", ""),
                "concurr": params.get("users", options.get("num_users", "")),
                "duration": options.get("run_time", options.get("duration", "")),
                "window": options.get("window", ""), "warmup": options.get("warmup", "")}
    for key, value in defaults.items():
        if key not in metadata:
            doc[key] = "" if value is None else value
    for key, value in mask_options(options).items():
        if key in _EXCLUDED_OPTIONS or not isinstance(value, (str, int, float, bool, list)):
            continue
        doc[escape_key(f"opt_{key}")] = _option_value(value)
    doc["result"] = _redact_result(result)
    return doc


# -- writing ----------------------------------------------------------------------------------------------------


def _client(target: MongoTarget, timeout_s: float):
    import pymongo

    ms = max(1, round(timeout_s * 1000))
    # keyword options override the same options in the URI: --db_timeout governs every wait
    return pymongo.MongoClient(target.uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms,
                               wTimeoutMS=ms, appname="ovms-bench", tz_aware=True, connect=False)


def _insert(target: MongoTarget, doc: dict, timeout_s: float) -> None:
    """One insert_one, bounded by 2 * timeout_s as a whole: a ping (server selection, connection, TLS and
    authentication) within timeout_s, then the insert (a retry included) within timeout_s."""
    import warnings

    import pymongo

    try:
        with warnings.catch_warnings():          # pymongo ignores an unknown or bad URI option with a warning
            warnings.simplefilter("error", UserWarning)
            client = _client(target, timeout_s)
    except Exception as exc:                    # bad options, an unreadable TLS file, an SRV name not in DNS
        raise MongoInputError(f"the MongoDB endpoint {target.display} is not usable: {_detail(exc)}") from None
    try:
        # pymongo.timeout() bounds each operation whole (its server selection takes the remaining time)
        with pymongo.timeout(timeout_s):
            client.admin.command("ping")
        with pymongo.timeout(timeout_s):
            client[target.database][target.collection].insert_one(doc)
    finally:
        client.close()


def _detail(exc: BaseException) -> str:
    """The first line of an exception's message, without pymongo's topology description or any password."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r" \(configured timeouts: [^)]*\)", "", text.split(", Timeout: ")[0])
    text = mask_uri(text)
    return text if len(text) <= 300 else text[:300] + "..."


def _describe(exc: BaseException, target: MongoTarget | None, timeout_s: float) -> str:
    """What went wrong, in words, without any password."""
    from pymongo import errors

    where = f"{target.display} (database {target.database!r}, collection {target.collection!r})" if target else ""
    detail = _detail(exc)
    code = getattr(exc, "code", None)
    if isinstance(exc, MongoExportError):
        return str(exc)
    if isinstance(exc, errors.ConfigurationError):
        return f"the MongoDB endpoint {where} is not usable: {detail}"
    if isinstance(exc, (errors.ServerSelectionTimeoutError, errors.ConnectionFailure, errors.ExecutionTimeout,
                        errors.WTimeoutError)) or (isinstance(exc, errors.PyMongoError) and exc.timeout):
        return (f"no answer from MongoDB at {where} within the {timeout_s:g} s timeout ({detail}); check the host, "
                "port, TLS options, or raise --db_timeout")
    if code in (18, 13) or isinstance(exc, errors.OperationFailure) and "authenticat" in detail.lower():
        return f"MongoDB at {where} refused the credentials (code {code}: {detail}); check user, password, authSource"
    if isinstance(exc, errors.OperationFailure):
        return f"MongoDB at {where} refused the document (code {code}: {detail})"
    if isinstance(exc, (errors.InvalidDocument, errors.DocumentTooLarge, OverflowError)):
        return f"the result cannot be stored as a MongoDB document ({type(exc).__name__}: {detail})"
    return f"MongoDB export to {where or 'the endpoint'} failed ({type(exc).__name__}: {detail})"


def _error_class(exc: BaseException, target: MongoTarget | None) -> type[MongoExportError]:
    """Bad input (the endpoint, its options) or a database failure."""
    from pymongo.errors import ConfigurationError

    return MongoInputError if target is None or isinstance(exc, (MongoInputError, ConfigurationError)) \
        else MongoExportError


def _dump_json(payload: dict) -> str:
    from bson import json_util

    return json_util.dumps(payload, json_options=json_util.RELAXED_JSON_OPTIONS, indent=1)


def _free_dump_path(path: Path, ident: str) -> Path:
    """``path``, or if a file (an earlier run's dump, not loaded yet) is there, ``path`` with the ``_id`` in its
    name: ``ovms-result.mongo.json`` -> ``ovms-result-<id>.mongo.json``."""
    if not path.exists():
        return path
    base, dot, rest = path.name.partition(".")
    return path.with_name(f"{base}-{ident}{dot}{rest}")


def _write_dump(path: Path, doc: dict, target: MongoTarget | None, endpoint: str, error: str) -> None:
    payload = {"format": DUMP_FORMAT,
               "endpoint": target.display if target else mask_uri(endpoint.strip()),
               "database": target.database if target else None,
               "collection": target.collection if target else None,
               "error": error, "document": doc}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_dump_json(payload) + "\n")
    tmp.replace(path)


def _load_command(path: Path, display: str) -> str:
    import shlex

    return f"ovms-bench db-load {shlex.quote(str(path))} --db_endpoint {shlex.quote(display)}"


def export(result: dict, *, endpoint: str, metadata: list[str], options: dict, return_code: int,
           client_version: str, dump_path: Path | None, timeout_s: float = 5.0) -> str:
    """Insert the run's document into MongoDB; its ``_id`` as a string. On any failure the document goes to
    ``dump_path`` (if given; if that file exists, to a name with the ``_id`` in it) and :class:`MongoExportError`
    (:class:`MongoInputError` for a bad endpoint) tells where, and how to load it later."""
    from bson import ObjectId

    doc = {"_id": ObjectId(), **build_document(result, options=options, metadata=parse_metadata(metadata),
                                               return_code=return_code, client_version=client_version)}
    target = None
    try:
        target = parse_endpoint(endpoint)
        _insert(target, doc, timeout_s)
    except Exception as exc:
        from pymongo.errors import DuplicateKeyError

        if isinstance(exc, DuplicateKeyError) and target is not None and "_id" in str(exc):
            return str(doc["_id"])          # a retried insert whose first attempt was stored after all
        reason = _describe(exc, target, timeout_s)
        display = target.display if target else mask_uri(endpoint.strip())
        if dump_path is None:
            raise _error_class(exc, target)(f"{reason}; the document was not saved (no dump file)") from None
        dump_path = _free_dump_path(Path(dump_path), str(doc["_id"]))
        try:
            _write_dump(Path(dump_path), doc, target, endpoint, reason)
        except (OSError, TypeError, ValueError) as dump_exc:
            raise _error_class(exc, target)(f"{reason}; and the document could not be saved to {dump_path}: "
                                            f"{dump_exc}") from None
        again = _load_command(Path(dump_path), display)
        if "***" in display:
            again += " (with the password in place of ***)"
        elif target is None:
            again = f"ovms-bench db-load {dump_path} --db_endpoint <a valid endpoint>"
        raise _error_class(exc, target)(f"{reason}; the document is saved in {dump_path}: store it later with "
                                        f"`{again}`") from None
    return str(doc["_id"])


def load_dump(path: Path, endpoint: str | None = None, timeout_s: float = 5.0) -> str:
    """Insert the document of a dump written by :func:`export`, keeping its ``_id``; that id as a string.

    ``endpoint`` defaults to the dump's own (unless it had a password, which the dump does not keep); a MongoDB
    URI without a ``collection`` option uses the dump's collection. A document already there (same ``_id``)
    raises :class:`MongoAlreadyLoaded`."""
    from bson import json_util
    from bson.codec_options import DatetimeConversion

    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MongoInputError(f"cannot read the dump {path}: {exc.strerror or exc}") from None
    options = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True, tzinfo=dt.UTC,
                                    datetime_conversion=DatetimeConversion.DATETIME)
    try:
        payload = json_util.loads(text, json_options=options)
    except (ValueError, TypeError) as exc:
        raise MongoInputError(f"{path} is not a MongoDB dump of ovms-bench (not Extended JSON: {exc})") from None
    doc = payload.get("document") if isinstance(payload, dict) else None
    if not isinstance(doc, dict) or payload.get("format") != DUMP_FORMAT or "_id" not in doc:
        raise MongoInputError(f"{path} is not a MongoDB dump of ovms-bench (no {DUMP_FORMAT!r} document)")
    stored = str(payload.get("endpoint") or "")
    if endpoint:
        try:
            target, named = _parse(endpoint)
        except MongoInputError as exc:
            raise MongoInputError(f"--db_endpoint: {exc}") from None
        if not named and payload.get("collection"):
            target = MongoTarget(target.uri, target.database, str(payload["collection"]), target.display)
    elif stored and "***" not in stored and payload.get("database"):
        target = parse_endpoint(stored)
    else:
        raise MongoInputError(f"the dump {path} keeps no usable endpoint ({stored or 'none'}): give --db_endpoint")
    ident = str(doc["_id"])
    try:
        _insert(target, doc, timeout_s)
    except Exception as exc:
        from pymongo.errors import DuplicateKeyError

        if isinstance(exc, DuplicateKeyError) and "_id" in str(exc):
            raise MongoAlreadyLoaded(f"already loaded: the document {ident} of {path} is in {target.display} "
                                     f"(database {target.database!r}, collection {target.collection!r})",
                                     ident) from None
        raise _error_class(exc, target)(f"{_describe(exc, target, timeout_s)}; the dump {path} is unchanged") \
            from None
    return ident
