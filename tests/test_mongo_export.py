"""MongoDB export: endpoint and metadata parsing, the document, inserts into a real MongoDB-wire server
(SecantusDB, from .venv-mongo), bounded failure with a loadable dump, and ``ovms-bench db-load``."""

from __future__ import annotations

import copy
import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from metrics_ext.mongo import (
    DEFAULT_COLLECTION,
    MongoAlreadyLoaded,
    MongoExportError,
    MongoInputError,
    build_document,
    escape_key,
    export,
    load_dump,
    parse_endpoint,
    parse_metadata,
    unescape_key,
)

SAMPLE = Path(__file__).resolve().parent / "data" / "sample_result.json"
REPO = Path(__file__).resolve().parent.parent
PASSWORD = "s3cr3t-Pw"


@pytest.fixture(scope="module")
def sample() -> dict:
    return json.loads(SAMPLE.read_text())


@pytest.fixture
def db_name() -> str:
    return f"bench_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def mongo(mongo_server: str) -> Iterator:
    """A pymongo client of the SecantusDB server, reading dates as UTC-aware datetimes."""
    import pymongo

    client = pymongo.MongoClient(f"mongodb://{mongo_server}", serverSelectionTimeoutMS=5000, tz_aware=True)
    yield client
    client.close()


def _export(sample: dict, endpoint: str, tmp_path: Path, **kw) -> str:
    args = {"metadata": ["gpu:A100", "note:run at 10:30"], "options": sample["parameters"]["options"],
            "return_code": 0, "client_version": "2.7", "dump_path": tmp_path / "result.mongo.json", "timeout_s": 5.0}
    args.update(kw)
    return export(sample, endpoint=endpoint, **args)


def _dump(path: Path) -> dict:
    from bson import json_util

    return json_util.loads(path.read_text(), json_options=json_util.JSONOptions(tz_aware=True, tzinfo=dt.UTC))


def _ovms_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovms_bench.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- without a server ---------------------------------------------------------------------------------------------


def test_importing_the_module_does_not_import_pymongo():
    proc = subprocess.run([sys.executable, "-c", "import metrics_ext.mongo, sys; assert 'pymongo' not in sys.modules; "
                           "assert 'bson' not in sys.modules"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("text, uri, database, collection", [
    ("mongodb://dbhost:benchmarks:runs", "mongodb://dbhost", "benchmarks", "runs"),
    ("  mongodb://10.0.0.5:bench:ovms.runs ", "mongodb://10.0.0.5", "bench", "ovms.runs"),
    ("mongodb://h:27017:db:c", "mongodb://h:27017", "db", "c"),                 # the old form, generously with a port
    ("mongodb://h:27017/bench", "mongodb://h:27017/bench", "bench", DEFAULT_COLLECTION),
    ("mongodb://h:27017/bench?collection=r1", "mongodb://h:27017/bench", "bench", "r1"),
    (f"mongodb://user:{PASSWORD}@h1:27017,h2:27018/bench?tls=true&tlsCAFile=/etc/ca.pem&collection=r1&authSource=admin",
     f"mongodb://user:{PASSWORD}@h1:27017,h2:27018/bench?tls=true&tlsCAFile=/etc/ca.pem&authSource=admin", "bench",
     "r1"),
    (f"mongodb+srv://user:{PASSWORD}@cluster0.example.net/bench?retryWrites=true&collection=c",
     f"mongodb+srv://user:{PASSWORD}@cluster0.example.net/bench?retryWrites=true", "bench", "c"),
    ("mongodb://[::1]:27017/b%2Dx?Collection=c", "mongodb://[::1]:27017/b%2Dx", "b-x", "c"),
])
def test_parse_endpoint_accepts_both_forms(text, uri, database, collection):
    target = parse_endpoint(text)
    assert (target.uri, target.database, target.collection) == (uri, database, collection)
    assert PASSWORD not in target.display
    if "@" in text:
        assert target.display.startswith(text.split("://")[0] + "://user:***@")
    else:
        assert target.display == text.strip()


def test_parse_endpoint_masks_every_secret():
    target = parse_endpoint(f"mongodb://u:{PASSWORD}@h/db?tlsCertificateKeyFilePassword={PASSWORD}&collection=r")
    assert target.display == "mongodb://u:***@h/db?tlsCertificateKeyFilePassword=***&collection=r"


@pytest.mark.parametrize("text, says", [
    ("mongodb://h:27017:db", "ambiguous"),                    # a port, or a database called 27017?
    ("mongodb://dbhost:benchmarks", "mongodb://HOST:DATABASE:COLLECTION"),
    ("mongodb://h:27017", "names no database"),
    ("mongodb://h/", "names no database"),
    ("mongodb://h?collection=c", "names no database"),
    ("http://h:db:c", "does not start with mongodb://"),
    ("dbhost:benchmarks:runs", "does not start with mongodb://"),
    ("mongodb://h/db/coll", "?collection=NAME"),
    ("mongodb://h/my.db", "may not contain '.'"),
    ("mongodb://h:1:2:3:4", "is not HOST or HOST:PORT"),
    ("mongodb://h:99999/db", "is not HOST or HOST:PORT"),
    ("mongodb://h:x:db:c", "one field too many"),
    ("mongodb+srv://h:27017/db", "without a port"),
    ("mongodb+srv://h1,h2/db", "exactly one host"),
    ("mongodb://h/db?collection=", "not a usable collection name"),
    ("mongodb://h/db?collection=system.users", "not a usable collection name"),
    ("mongodb://h:db:", "not a usable collection name"),
    ("mongodb://h/db?tls", "has no '=value'"),
    (f"mongodb://u:{PASSWORD}@h:x/db", "is not HOST or HOST:PORT"),
])
def test_parse_endpoint_rejects_bad_input_clearly(text, says):
    with pytest.raises(MongoInputError) as err:
        parse_endpoint(text)
    message = str(err.value)
    assert says in message and "\n" not in message
    assert PASSWORD not in message


def test_parse_metadata():
    assert parse_metadata([]) == {}
    assert parse_metadata(["gpu:A100", "url:http://h:8000/x", "empty:", "gpu:H100"]) == {
        "gpu": "H100", "url": "http://h:8000/x", "empty": ""}
    for item, says in (("novalue", "not key:value"), (":v", "not key:value"), ("a.b:1", "may not hold '.'"),
                       ("$set:1", "start with '$'"), ("final_results:x", "the run sets itself"),
                       ("_id:1", "the run sets itself"), ("opt_api:x", "the run sets itself")):
        with pytest.raises(MongoInputError, match=None) as err:
            parse_metadata(["ok:1", item])
        assert says in str(err.value), str(err.value)


def test_build_document_has_the_ovms_client_fields(sample):
    doc = build_document(sample, options=sample["parameters"]["options"],
                         metadata={"gpu": "A100", "warmup": "custom"}, return_code=255, client_version="2.7")
    stats = sample["statistics"]
    assert doc["final_results"] == {**{f"xcli_{k}": v for k, v in stats.items()}, "xcli_return_code": 255}
    assert doc["internal_results"] == [] and doc["client_version"] == "2.7"
    assert doc["execution_date"].tzinfo is not None and doc["execution_date"].microsecond % 1000 == 0
    assert abs(doc["execution_date"] - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=60)
    assert (doc["model_name"], doc["model_version"], doc["model"]) == ("resnet_dyn", "", "resnet_dyn")
    assert (doc["batchsize"], doc["concurr"], doc["duration"], doc["iterations"]) == ("1-2-4", 4, 8, "0")
    assert doc["warmup"] == "custom" and doc["gpu"] == "A100"           # metadata wins over the defaults
    options = sample["parameters"]["options"]
    expected = {f"opt_{k}": ("_".join(map(str, v)) if isinstance(v, list) else v) for k, v in options.items()
                if isinstance(v, (str, int, float, bool, list)) and k not in ("quantile_list", "db_endpoint")}
    assert {k: v for k, v in doc.items() if k.startswith("opt_")} == expected
    assert "opt_quantile_list" not in doc and "opt_config" not in doc          # excluded, None
    assert doc["result"] == sample


def test_build_document_escapes_keys_and_hides_passwords(sample):
    result = copy.deepcopy(sample)
    result["workers"] = {"host.a.example_1": "final", "$weird": "final", "50%": "x"}
    options = {**result["parameters"]["options"], "bs": [1, 4], "web_auth": f"admin:{PASSWORD}",
               "db_endpoint": f"mongodb://u:{PASSWORD}@h/db", "db_metadata": ["a:b"]}
    result["parameters"]["options"] = options
    result["parameters"]["client"]["argv"] += ["--db_endpoint", f"mongodb://u:{PASSWORD}@h/db",
                                               "--web-auth", f"admin:{PASSWORD}"]
    doc = build_document(result, options=options, metadata={}, return_code=0, client_version="2.7")
    assert PASSWORD not in json.dumps(doc, default=str)
    assert set(doc["result"]["workers"]) == {"host%2Ea%2Eexample_1", "%24weird", "50%25"}
    assert {unescape_key(k) for k in doc["result"]["workers"]} == set(result["workers"])
    assert doc["batchsize"] == "1-4" and doc["opt_bs"] == "1_4"
    assert not {"opt_web_auth", "opt_db_endpoint", "opt_db_metadata"} & set(doc)
    assert doc["result"]["parameters"]["client"]["argv"][-3:] == ["mongodb://u:***@h/db", "--web-auth", "***"]
    for key in ("a.b", "$x", "%2E", "plain_key"):
        assert unescape_key(escape_key(key)) == key
        assert "." not in escape_key(key) and not escape_key(key).startswith("$")


def test_export_with_a_bad_endpoint_dumps_and_says_so(sample, tmp_path):
    with pytest.raises(MongoInputError) as err:
        _export(sample, f"mongodb://u:{PASSWORD}@h:db", tmp_path)
    message = str(err.value)
    assert "result.mongo.json" in message and "ovms-bench db-load" in message and PASSWORD not in message
    dump = _dump(tmp_path / "result.mongo.json")
    assert dump["database"] is None and PASSWORD not in (tmp_path / "result.mongo.json").read_text()
    assert dump["document"]["result"] == sample
    with pytest.raises(MongoInputError) as err:                   # an unloaded dump is never overwritten
        _export(sample, f"mongodb://u:{PASSWORD}@h:db", tmp_path)
    second = tmp_path / f"result-{_dump(tmp_path / 'result.mongo.json')['document']['_id']}.mongo.json"
    assert not second.exists()
    (second,) = set(tmp_path.glob("result-*.mongo.json"))
    assert str(second) in str(err.value) and _dump(second)["document"]["_id"] != dump["document"]["_id"]


@pytest.mark.parametrize("options, says", [
    ("tls=maybe", "tls must be 'true' or 'false'"),
    ("tls=true&tlsCAFile=/nonexistent/ca.pem", "not readable"),
    ("authSorce=admin", "Did you mean one of (authsource"),          # pymongo would only warn, and ignore it
])
def test_export_with_unusable_uri_options_fails_at_once(sample, tmp_path, options, says):
    t0 = time.monotonic()
    with pytest.raises(MongoInputError) as err:
        _export(sample, f"mongodb://u:{PASSWORD}@127.0.0.1:1/db?{options}", tmp_path, timeout_s=5.0)
    assert time.monotonic() - t0 < 2
    message = str(err.value)
    assert "is not usable" in message and says in message and PASSWORD not in message and "\n" not in message
    assert _dump(tmp_path / "result.mongo.json")["document"]["result"] == sample


def test_export_rejects_bad_metadata_before_anything(sample, tmp_path):
    with pytest.raises(MongoInputError, match="not key:value"):
        _export(sample, "mongodb://127.0.0.1:1:db:c", tmp_path, metadata=["oops"])
    assert not (tmp_path / "result.mongo.json").exists()


def test_load_dump_rejects_files_that_are_not_dumps(tmp_path):
    bad = tmp_path / "x.json"
    for text in ("not json {", json.dumps({"format": "something else", "document": {}}), "[]"):
        bad.write_text(text)
        with pytest.raises(MongoInputError, match="not a MongoDB dump"):
            load_dump(bad, "mongodb://127.0.0.1:1:db:c")
    with pytest.raises(MongoInputError, match="cannot read the dump"):
        load_dump(tmp_path / "missing.json", "mongodb://127.0.0.1:1:db:c")


# -- against a real MongoDB-wire server ---------------------------------------------------------------------------


def _check_stored(stored: dict, sample: dict, ident: str, metadata: dict) -> None:
    from bson import ObjectId

    assert stored["_id"] == ObjectId(ident)
    assert stored["final_results"] == {**{f"xcli_{k}": v for k, v in sample["statistics"].items()},
                                       "xcli_return_code": 0}
    assert stored["result"] == sample
    assert isinstance(stored["execution_date"], dt.datetime) and stored["execution_date"].tzinfo is not None
    assert abs(stored["execution_date"] - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert stored["opt_api"] == "kfs" and stored["opt_model_name"] == "resnet_dyn" and stored["opt_run_time"] == 8
    assert stored["client_version"] == "2.7" and stored["internal_results"] == []
    for key, value in metadata.items():
        assert stored[key] == value


@pytest.mark.parametrize("form", ["ovms", "uri"])
def test_export_inserts_one_document(mongo, mongo_server, sample, tmp_path, db_name, form):
    host, port = mongo_server.split(":")
    endpoint = (f"mongodb://{host}:{port}:{db_name}:runs" if form == "ovms" else
                f"mongodb://{host}:{port}/{db_name}?appname=bench-test&collection=runs&w=1")
    run_id = uuid.uuid4().hex
    ident = _export(sample, endpoint, tmp_path, metadata=["gpu:A100", f"run:{run_id}", "note:at 10:30"])
    coll = mongo[db_name]["runs"]
    assert coll.count_documents({}) == 1
    from bson import ObjectId

    _check_stored(coll.find_one({"_id": ObjectId(ident)}), sample, ident,
                  {"gpu": "A100", "run": run_id, "note": "at 10:30"})
    assert coll.find_one({"run": run_id})["_id"] == ObjectId(ident)
    assert not (tmp_path / "result.mongo.json").exists()


def test_unreachable_database_fails_fast_and_the_dump_loads_later(mongo, mongo_server, sample, tmp_path, db_name):
    dead = _free_port()
    endpoint = f"mongodb://bench:{PASSWORD}@127.0.0.1:{dead}/{db_name}?authSource=admin&collection=later"
    t0 = time.monotonic()
    with pytest.raises(MongoExportError) as err:
        _export(sample, endpoint, tmp_path, timeout_s=1.0, metadata=["gpu:A100"])
    elapsed = time.monotonic() - t0
    assert elapsed < 2.5, f"the export took {elapsed:.1f} s with a 1 s timeout"
    message = str(err.value)
    dump_path = tmp_path / "result.mongo.json"
    assert not isinstance(err.value, MongoInputError)
    assert "no answer from MongoDB" in message and str(dump_path) in message and PASSWORD not in message
    assert f"ovms-bench db-load {dump_path} --db_endpoint" in message and "***" in message
    assert PASSWORD not in dump_path.read_text()
    dump = _dump(dump_path)
    assert (dump["database"], dump["collection"]) == (db_name, "later")
    assert dump["endpoint"] == f"mongodb://bench:***@127.0.0.1:{dead}/{db_name}?authSource=admin&collection=later"
    assert isinstance(dump["document"]["execution_date"], dt.datetime)

    with pytest.raises(MongoInputError, match="give --db_endpoint"):
        load_dump(dump_path, None)                          # the dump keeps no password
    live = f"mongodb://{mongo_server}/{db_name}"            # no collection option: the dump's
    ident = load_dump(dump_path, live)
    assert ident == str(dump["document"]["_id"])
    stored = mongo[db_name]["later"].find_one({"gpu": "A100"})
    _check_stored(stored, sample, ident, {"gpu": "A100"})
    assert stored["execution_date"] == dump["document"]["execution_date"]
    assert {k: v for k, v in stored.items() if k != "final_results"} == \
        {k: v for k, v in dump["document"].items() if k != "final_results"}
    with pytest.raises(MongoAlreadyLoaded, match="already loaded") as again:
        load_dump(dump_path, live)
    assert again.value.inserted_id == ident
    assert mongo[db_name]["later"].count_documents({}) == 1


def test_load_dump_uses_the_endpoint_kept_in_the_dump(mongo, mongo_server, sample, tmp_path, db_name):
    with pytest.raises(MongoExportError):
        _export(sample, f"mongodb://127.0.0.1:{_free_port()}:{db_name}:c", tmp_path, timeout_s=0.5)
    dump_path = tmp_path / "result.mongo.json"
    payload = json.loads(dump_path.read_text())
    payload["endpoint"] = f"mongodb://{mongo_server}:{db_name}:c"          # as if the server were back
    dump_path.write_text(json.dumps(payload))
    ident = load_dump(dump_path)
    assert str(mongo[db_name]["c"].find_one({})["_id"]) == ident


def test_server_side_write_error_dumps_the_document(mongo, mongo_server, sample, tmp_path, db_name):
    from mockupdb import MockupDB, OpMsg, go

    server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    server.autoresponds("ping")
    server.run()
    try:
        endpoint = f"mongodb://{server.address_string}/{db_name}?collection=runs"
        future = go(_export, sample, endpoint, tmp_path, timeout_s=5.0, metadata=["gpu:A100"])
        request = server.receives(OpMsg({"insert": "runs"}), timeout=10)
        sent = request.docs[0]["documents"][0]
        request.command_err(code=121, errmsg="Document failed validation")   # not a retryable code
        with pytest.raises(MongoExportError) as err:
            future()
    finally:
        server.stop()
    message = str(err.value)
    assert not isinstance(err.value, MongoInputError)
    assert "refused the document (code 121: Document failed validation" in message
    assert "ovms-bench db-load" in message
    dump = _dump(tmp_path / "result.mongo.json")
    assert {k: v for k, v in dump["document"].items() if k != "execution_date"} == \
        {k: v for k, v in sent.items() if k != "execution_date"}                 # nothing lost
    assert dump["document"]["result"] == sample == sent["result"]
    assert dump["document"]["execution_date"] == sent["execution_date"].replace(tzinfo=dt.UTC)
    ident = load_dump(tmp_path / "result.mongo.json", f"mongodb://{mongo_server}/{db_name}")
    stored = mongo[db_name]["runs"].find_one({"_id": sent["_id"]})
    _check_stored(stored, sample, ident, {"gpu": "A100"})


def test_db_load_command(mongo, mongo_server, sample, tmp_path, db_name):
    with pytest.raises(MongoExportError):
        _export(sample, f"mongodb://127.0.0.1:{_free_port()}:{db_name}:cli", tmp_path, timeout_s=0.5)
    dump_path = tmp_path / "result.mongo.json"
    live = f"mongodb://{mongo_server}/{db_name}?collection=cli"
    ok = _ovms_bench("db-load", str(dump_path), "--db_endpoint", live)
    assert ok.returncode == 0, ok.stderr
    ident = ok.stdout.strip()
    assert str(mongo[db_name]["cli"].find_one({})["_id"]) == ident
    again = _ovms_bench("db-load", str(dump_path), "--db_endpoint", live)
    assert again.returncode == 0 and again.stdout.strip() == ident and "already loaded" in again.stderr
    assert mongo[db_name]["cli"].count_documents({}) == 1

    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    for args in ((str(bad), "--db_endpoint", live), (str(tmp_path / "missing.json"), "--db_endpoint", live),
                 (str(dump_path), "--db_endpoint", "mongodb://h:db")):
        proc = _ovms_bench("db-load", *args)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("ovms-bench: error: ") and proc.stdout == ""

    down = _ovms_bench("db-load", str(dump_path), "--db_endpoint", f"mongodb://127.0.0.1:{_free_port()}/{db_name}",
                       "--db_timeout", "0.5")
    assert down.returncode == 4 and "no answer from MongoDB" in down.stderr and "Traceback" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
