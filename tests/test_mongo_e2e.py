"""The MongoDB export at the end of real Locust runs: a real MongoDB-wire server (secantusdb), and none."""

from __future__ import annotations

import json
import time

import pymongo
from bson import ObjectId

from tests.conftest import _free_ports
from tests.locust_run import run_distributed, run_locust


def _find(mongo_server: str, database: str, collection: str, **query) -> list[dict]:
    client = pymongo.MongoClient(f"mongodb://{mongo_server}", serverSelectionTimeoutMS=5000)
    try:
        return list(client[database][collection].find(query))
    finally:
        client.close()


def test_a_local_run_stores_its_result_found_by_a_query(refserver, mongo_server, tmp_path):
    out = tmp_path / "result.json"
    host, port = mongo_server.split(":")
    endpoint = f"mongodb://{host}:{port}/bench?collection=e2e_local"
    result = run_locust(refserver.grpc_address, "--api", "kfs", "--model_name", "dummy", "--result_file", str(out),
                        "-Y", endpoint, "-y", "team:inference 'note:two words'", "--ovms_json",
                        "--ovms_id", "mongo7", users=2, run_time="2s")
    assert result.returncode == 0, result.stderr[-2000:]
    doc_json = json.loads(out.read_text())
    # the OVMS client's short flags -Y/-y work; its DB-ID line names the stored document
    line = next(x for x in result.stdout.splitlines() if x.startswith("JSON-OUTPUT:###mongo7###DB-ID###"))
    ident = json.loads(line.split("###", 3)[3])["_id"]
    (doc,) = _find(mongo_server, "bench", "e2e_local", team="inference")
    assert doc["_id"] == ObjectId(ident) and doc["note"] == "two words"
    assert doc["final_results"]["xcli_return_code"] == 0
    for key, value in doc_json["statistics"].items():
        assert doc["final_results"][f"xcli_{key}"] == value, key
    assert doc["result"]["statistics"] == doc_json["statistics"]
    assert doc["model_name"] == "dummy" and doc["client_version"] == "2.7" and doc["opt_api"] == "kfs"


def test_a_distributed_run_stores_one_document_from_the_master(refserver, mongo_server):
    endpoint = f"mongodb://{mongo_server}:bench:e2e_distributed"   # the OVMS client's form (with a port)
    master, _workers = run_distributed(refserver.grpc_address, "--api", "kfs", "--model_name", "dummy",
                                       "--db_endpoint", endpoint, "--db_metadata", "run:dist1", workers=2, users=4,
                                       run_time="3s")
    assert master.returncode == 0, master.stderr[-2000:]
    docs = _find(mongo_server, "bench", "e2e_distributed", run="dist1")
    assert len(docs) == 1
    stats = docs[0]["result"]["statistics"]
    assert stats["submetrics"] == 2 and stats["total_batches"] > 100
    assert docs[0]["final_results"]["xcli_total_batches"] == stats["total_batches"]


def test_an_unreachable_database_loses_nothing(refserver, mongo_server, tmp_path):
    (dead,) = _free_ports(1)   # nothing listens there
    out = tmp_path / "result.json"
    endpoint = f"mongodb://user:s3cret@127.0.0.1:{dead}/bench?collection=e2e_late"
    started = time.monotonic()
    result = run_locust(refserver.grpc_address, "--api", "kfs", "--model_name", "dummy", "--result_file", str(out),
                        "--db_endpoint", endpoint, "--db_timeout", "1", users=1, run_time="2s")
    elapsed = time.monotonic() - started
    assert result.returncode == 4, result.stderr[-2000:]
    assert elapsed < 25, elapsed   # bounded: about --db_timeout per step, never pymongo's 30 s
    errors = [line for line in result.stderr.splitlines() if "MongoDB" in line or "mongo" in line]
    assert errors and "Traceback" not in result.stderr and "s3cret" not in result.stderr + result.stdout
    # the JSON result is on disk first, without the password; the document is saved beside it
    doc_json = json.loads(out.read_text())
    assert doc_json["statistics"]["total_batches"] > 0 and "s3cret" not in out.read_text()
    dumps = sorted(tmp_path.glob("result*.mongo.json"))
    assert len(dumps) == 1 and "s3cret" not in dumps[0].read_text()
    assert f"ovms-bench db-load {dumps[0]}" in result.stderr
    # ... and loads later into a database that is up, with the documented command's function
    from metrics_ext.mongo import load_dump

    host, port = mongo_server.split(":")
    ident = load_dump(dumps[0], f"mongodb://{host}:{port}/bench?collection=e2e_late", timeout_s=5)
    (doc,) = _find(mongo_server, "bench", "e2e_late")
    assert str(doc["_id"]) == ident
    assert doc["result"]["statistics"] == doc_json["statistics"]
