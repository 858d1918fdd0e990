"""The load options: Locust custom arguments with the OVMS client's long names, parsed into one typed object.

Every value is read from a string, whatever its source (command line, ``locust.conf``,
``LOCUST_*`` environment variables, or the web UI's start form, which hands strings back), and
checked in :meth:`BenchOptions.parse`; a bad value raises :class:`OptionError` naming the option.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovms_users.errors import OptionError
from ovms_users.security import parse_headers

__all__ = ["BenchOptions", "ShapeOption", "add_arguments", "API_NAMES", "parse_host"]

#: --api spellings -> canonical name. The original's TFS/KFS/REST are accepted (REST means TFS REST).
API_NAMES = {"tfs": "tfs", "kfs": "kfs", "tfs-grpc": "tfs", "kfs-grpc": "kfs", "tfs-rest": "tfs-rest",
             "kfs-rest": "kfs-rest", "rest": "tfs-rest"}
GRPC_APIS = ("tfs", "kfs")

# (option, default, help) — one row per custom argument; defaults are strings, like every value we parse.
_ARGS: tuple[tuple[str, str, str], ...] = (
    ("api", "tfs", "API to drive: tfs (TF Serving gRPC), kfs (KServe v2 gRPC), tfs-rest, kfs-rest; the original's "
                   "TFS, KFS and REST (= tfs-rest) spellings are accepted"),
    ("model_name", "", "model (servable) name; required"),
    ("model_version", "", "model version (default: the latest the server serves); used in every request"),
    ("bs", "", "batch sizes cycled through the dataset, e.g. '1 2 4' or '1-2-4' (default: the model's batch "
               "dimension, or the first dimension of --shape, or 1)"),
    ("shape", "", "forced input shapes: 'D0 D1 ...' for every input, or 'NAME: D0 D1 ... NAME2: ...' per input; "
                  "the first dimension is the batch, set by --bs"),
    ("data", "random", "data methods, one default and/or NAME:METHOD items: random, png, pngN (N blur passes), "
                       "png-xrandom, jpeg, string, or a path to a .npy, .png, .jpg or .txt file"),
    ("dataset_length", "", "number of distinct requests built before the test (default: one per batch size, or "
                           "every full batch of a .npy file)"),
    ("min_value", "0.0", "lowest value of random data (clipped to each precision's range)"),
    ("max_value", "255.0", "highest value of random data (clipped to each precision's range)"),
    ("xrand", "8", "seed points per png-xrandom image"),
    ("dump_dir", "", "also save every generated image into this folder"),
    ("seed", "", "seed for generated data (default: fresh random data each run)"),
    ("stateful_length", "0", "requests per stateful sequence; 0 = not stateful"),
    ("stateful_id", "1", "first sequence id; every user gets its own block of ids"),
    ("stateful_hop", "0", "id increment between a user's consecutive sequences; 0 reuses the user's id"),
    ("step_timeout", "30", "seconds before one inference request times out (fractions allowed)"),
    ("metadata_timeout", "45", "seconds to keep retrying model status and metadata before giving up"),
    ("certs_dir", "", "TLS (mutual) with the OVMS client's files: DIR/server.pem (trusted root), client.pem, "
                      "client.key"),
    ("ssl_ca", "", "TLS: trusted CA file (overrides certs_dir/server.pem)"),
    ("ssl_cert", "", "TLS: client certificate file (overrides certs_dir/client.pem)"),
    ("ssl_key", "", "TLS: client key file (overrides certs_dir/client.key)"),
    ("rest_format", "columnar", "TFS REST body: columnar ({\"inputs\": ...}) or row ({\"instances\": [...]})"),
    ("kfs_data", "auto", "KServe v2 REST tensors: binary (the binary-data extension), json, or auto (binary from "
                         "1 KiB of tensor data, or for bytes that are not text)"),
    ("steps_number", "0", "requests each user sends before it stops (the OVMS client's -n, per concurrent "
                          "client); the test ends when every user is done; 0 = no limit"),
    ("error_limit", "0", "stop the test once a load process has seen more than this many failed requests; "
                         "0 = no limit"),
    ("error_exposition", "10", "print the first N failed requests in full; 0 = every one"),
    ("max_throughput", "", "open-loop load in frames per second for the whole test: requests start on a schedule "
                           "whether or not earlier ones finished, each advancing it by its batch size; latency is "
                           "measured from each request's intended start (see --arrival_rate); default: closed loop"),
    ("arrival_rate", "", "open-loop load in requests per second for the whole test (all processes and workers, "
                         "split in proportion to their users): requests start on a schedule whether or not earlier "
                         "ones finished, at most one in flight per user; latency is measured from each request's "
                         "intended start; 0 or empty = closed loop"),
    ("arrivals", "constant", "open-loop arrivals: constant (evenly spaced) or poisson (exponential gaps from a "
                             "seeded generator, --seed)"),
)

#: --arrivals values
ARRIVALS = ("constant", "poisson")


def add_arguments(parser: Any) -> None:
    """Register the options on Locust's parser (``init_command_line_parser``) or a plain argparse parser."""
    locust = hasattr(parser, "args_included_in_web_ui")   # Locust's parser: env vars, config files, web UI form
    target = parser if locust else parser.add_argument_group("OVMS benchmark", "model server load options")
    for name, default, help_text in _ARGS:
        extra: dict[str, Any] = {"env_var": f"LOCUST_{name.upper()}", "include_in_web_ui": True} if locust else {}
        target.add_argument(f"--{name}", default=default, help=help_text, **extra)
    # security (README "Security"): the headers may hold credentials, so they are never in the web UI's form
    secret: dict[str, Any] = {"env_var": "LOCUST_HEADER", "include_in_web_ui": False} if locust else {}
    target.add_argument("--header", action="append", default=None, metavar="'NAME: VALUE'", **secret,
                        help="a request header sent on every REST request and as gRPC metadata on every gRPC call "
                             "(e.g. 'Authorization: Bearer TOKEN'); repeat it, or separate headers with ';'. Its "
                             "value is never printed or stored")
    flag: dict[str, Any] = {"env_var": "LOCUST_TLS_NO_VERIFY", "include_in_web_ui": True} if locust else {}
    target.add_argument("--tls_no_verify", action="store_true", default=False, **flag,
                        help="TLS without checking the server's certificate and host name (warned at start); by "
                             "default they are checked")


def _int(option: str, text: str, minimum: int = 0) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise OptionError(f"--{option}", f"{text!r} is not a whole number") from None
    if value < minimum:
        raise OptionError(f"--{option}", f"needs a number >= {minimum}, got {value}")
    return value


def _float(option: str, text: str, positive: bool = False) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise OptionError(f"--{option}", f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise OptionError(f"--{option}", f"{text!r} is not a finite number")
    if positive and value <= 0:
        raise OptionError(f"--{option}", f"needs a number > 0, got {value}")
    return value


def _choice(option: str, text: str, choices: tuple[str, ...]) -> str:
    value = str(text).strip().lower()
    if value not in choices:
        raise OptionError(f"--{option}", f"unknown value {text!r}; use {', '.join(choices)}")
    return value


def _tokens(text: str | list | None) -> list[str]:
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        return [t for item in text for t in str(item).split()]
    return str(text).split()


def parse_batch_sizes(text: str | list) -> list[int]:
    for t in _tokens(text):   # '-' separates sizes (1-2-4); one where a size should start makes it negative
        if re.search(r"(?:^|[-,])-", t):
            raise OptionError("--bs", f"{t!r} holds a negative size; batch sizes are whole numbers >= 1, e.g. "
                                      "'1 2 4' or 1-2-4")
    items = [p for t in _tokens(text) for p in re.split(r"[-,]", t) if p]
    sizes = [_int("bs", p, minimum=1) for p in items]
    return sizes


@dataclass(frozen=True)
class ShapeOption:
    """``--shape``: a default shape for every input and/or per-input shapes (names end with ``:``)."""
    default: tuple[int, ...] | None = None
    per_input: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | list) -> ShapeOption:
        default: list[int] = []
        per: dict[str, list[int]] = {}
        current: list[int] | None = None
        for tok in _tokens(text):
            if tok.endswith(":") and len(tok) > 1:
                name = tok[:-1]
                if name in per:
                    raise OptionError("--shape", f"input {name!r} is given twice")
                current = per[name] = []
                continue
            dim = _int("shape", tok, minimum=-1)
            if dim == 0 or (dim == -1 and (current if current is not None else default)):
                raise OptionError("--shape", f"dimension {tok} is not allowed: dimensions are positive (only the "
                                             "first, the batch, may be -1)")
            (current if current is not None else default).append(dim)
            if current is None and per:
                raise OptionError("--shape", "plain dimensions must come before the first 'NAME:'")
        for name, dims in per.items():
            if not dims:
                raise OptionError("--shape", f"input {name!r} has no dimensions after '{name}:'")
        return cls(tuple(default) or None, {k: tuple(v) for k, v in per.items()})

    def for_input(self, name: str) -> tuple[int, ...] | None:
        return self.per_input.get(name, self.default)


def parse_host(host: str | None, api: str) -> tuple[str, bool]:
    """Locust's ``--host`` as the transport wants it, and whether its scheme asks for TLS.

    gRPC: ``host:port`` (``grpcs://`` means TLS). REST: ``http(s)://host:port`` (a bare ``host:port`` is http).
    """
    rest = api.endswith("-rest")
    example = "http://127.0.0.1:8000" if rest else "127.0.0.1:9000"
    if not host:
        raise OptionError("--host", f"give the server, e.g. --host {example}")
    text = host.strip()
    tls = False
    m = re.match(r"^(grpc|grpcs|http|https)://(.*)$", text)
    if m:
        tls = m.group(1) in ("grpcs", "https")
        text = m.group(2)
        if m.group(1).startswith("http") != rest:
            raise OptionError("--host", f"{host!r} is a {'REST' if not rest else 'gRPC'} address but --api {api} "
                                        f"wants {'REST' if rest else 'gRPC'}, e.g. {example}")
    text = text.rstrip("/")
    if not re.match(r"^(\[[0-9a-fA-F:]+\]|[^/:\s]+):\d{1,5}$", text):
        raise OptionError("--host", f"{host!r} is not host:port (for example {example})")
    return text, tls


@dataclass(frozen=True)
class BenchOptions:
    api: str = "tfs"
    model_name: str = ""
    model_version: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    shape: ShapeOption = field(default_factory=ShapeOption)
    data: tuple[str, ...] = ("random",)
    dataset_length: int | None = None
    min_value: float = 0.0
    max_value: float = 255.0
    xrand: int = 8
    dump_dir: Path | None = None
    seed: int | None = None
    stateful_length: int = 0
    stateful_id: int = 1
    stateful_hop: int = 0
    step_timeout: float = 30.0
    metadata_timeout: float = 45.0
    certs_dir: Path | None = None
    ssl_ca: Path | None = None
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    steps_number: int = 0
    rest_format: str = "columnar"
    kfs_data: str = "auto"
    error_limit: int = 0
    error_exposition: int = 10
    max_throughput: float | None = None
    arrival_rate: float | None = None
    arrivals: str = "constant"
    tls_no_verify: bool = False
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)   # --header: never in a repr

    @property
    def stateful(self) -> bool:
        return self.stateful_length > 0

    @property
    def open_loop(self) -> bool:
        """--arrival_rate or --max_throughput: requests start on a schedule, not when the previous one ended."""
        return self.arrival_rate is not None or self.max_throughput is not None

    @property
    def tls_files(self) -> tuple[Path | None, Path | None, Path | None]:
        """(trusted root, client certificate, client key), explicit paths winning over certs_dir's files."""
        d = self.certs_dir
        return (self.ssl_ca or (d / "server.pem" if d else None), self.ssl_cert or (d / "client.pem" if d else None),
                self.ssl_key or (d / "client.key" if d else None))

    @classmethod
    def parse(cls, values: Mapping[str, Any] | argparse.Namespace, require_model: bool = True) -> BenchOptions:
        v = vars(values) if isinstance(values, argparse.Namespace) else dict(values)
        get = lambda name: v.get(name) if v.get(name) not in (None, "") else None  # noqa: E731
        api_text = str(get("api") or "tfs").strip().lower()
        if api_text not in API_NAMES:
            raise OptionError("--api", f"unknown API {api_text!r}; use tfs, kfs, tfs-rest or kfs-rest (or TFS, KFS, "
                                       "REST)")
        api = API_NAMES[api_text]
        model = str(get("model_name") or "").strip()
        if not model and require_model:
            raise OptionError("--model_name", "give the model to benchmark, e.g. --model_name resnet")
        version = _int("model_version", get("model_version"), minimum=1) if get("model_version") else None
        bs = tuple(parse_batch_sizes(get("bs"))) if get("bs") else None
        data = tuple(_tokens(get("data"))) or ("random",)
        lo = _float("min_value", get("min_value") or "0")
        hi = _float("max_value", get("max_value") or "255")
        if lo > hi:
            raise OptionError("--min_value", f"{lo} is above --max_value {hi}")
        stateful_length = _int("stateful_length", get("stateful_length") or "0")
        if stateful_length == 1 and api.startswith("tfs"):
            raise OptionError("--stateful_length", "must be at least 2 over the TFS API, whose control input says "
                                                   "either start or end; use 2 or more, or --api kfs")
        path = lambda name: Path(str(get(name))).expanduser() if get(name) else None  # noqa: E731
        max_throughput = _float("max_throughput", get("max_throughput"), positive=True) \
            if get("max_throughput") else None
        arrival_rate = _float("arrival_rate", get("arrival_rate")) if get("arrival_rate") else None
        if arrival_rate is not None and arrival_rate < 0:
            raise OptionError("--arrival_rate", f"needs requests per second > 0 (or 0 for closed-loop load), got "
                                                f"{arrival_rate:g}")
        arrival_rate = arrival_rate or None
        arrivals = _choice("arrivals", get("arrivals") or "constant", ARRIVALS)
        if arrival_rate is not None and max_throughput is not None:
            raise OptionError("--arrival_rate", "give either --arrival_rate (requests/s) or --max_throughput "
                                                "(frames/s), not both")
        if arrivals != "constant" and arrival_rate is None and max_throughput is None:
            raise OptionError("--arrivals", f"{arrivals} arrivals need a rate: give --arrival_rate (requests/s) or "
                                            "--max_throughput (frames/s)")
        return cls(
            api=api, model_name=model, model_version=version, batch_sizes=bs,
            shape=ShapeOption.parse(get("shape") or ""), data=data,
            dataset_length=_int("dataset_length", get("dataset_length"), minimum=1) if get("dataset_length") else None,
            min_value=lo, max_value=hi, xrand=_int("xrand", get("xrand") or "8", minimum=1),
            dump_dir=path("dump_dir"), seed=_int("seed", get("seed")) if get("seed") else None,
            stateful_length=stateful_length, stateful_id=_int("stateful_id", get("stateful_id") or "1", minimum=1),
            stateful_hop=_int("stateful_hop", get("stateful_hop") or "0"),
            step_timeout=_float("step_timeout", get("step_timeout") or "30", positive=True),
            metadata_timeout=_float("metadata_timeout", get("metadata_timeout") or "45", positive=True),
            certs_dir=path("certs_dir"), ssl_ca=path("ssl_ca"), ssl_cert=path("ssl_cert"), ssl_key=path("ssl_key"),
            steps_number=_int("steps_number", get("steps_number") or "0"),
            rest_format=_choice("rest_format", get("rest_format") or "columnar", ("columnar", "row")),
            kfs_data=_choice("kfs_data", get("kfs_data") or "auto", ("auto", "binary", "json")),
            error_limit=_int("error_limit", get("error_limit") or "0"),
            error_exposition=_int("error_exposition", get("error_exposition") if get("error_exposition") is not None
                                  else "10"),
            max_throughput=max_throughput, arrival_rate=arrival_rate, arrivals=arrivals,
            tls_no_verify=str(v.get("tls_no_verify") or "").strip().lower() in ("true", "1", "yes", "on"),
            headers=parse_headers(v.get("header")),
        )
