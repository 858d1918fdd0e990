"""Faults during a run, each made by the real component failing: the model server killed and started
again, frozen past the step timeout; the master stopped by a signal; a result path that cannot be
written, before the run and in the middle of it (a real full tmpfs in a private mount namespace).

The distributed faults with a real worker killed, a fault rate checked against the server's own
counters, and MongoDB down live in test_metrics_e2e.py, test_refserver_process.py and
test_mongo_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from metrics_ext.output import RESULT_EXIT_CODE, MetricsError, check_writable
from refserver.launcher import RefServer
from tests.conftest import scrape_counter, terminate
from tests.locust_run import LOCUST, LOCUSTFILE, ROOT, LocustResult, start_distributed

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def locust_cmd(host: str, api: str, out: Path, *extra: str, users: int = 4, run_time: str = "7s") -> list[str]:
    return LOCUST + ["-f", str(LOCUSTFILE), "--host", host, "--headless", "-u", str(users), "-r", str(users),
                     "-t", run_time, "--json", "--skip-log-setup", "--api", api, "--model_name", "dummy",
                     "--result_file", str(out), "--error_exposition", "2", *extra]


def host_of(server: RefServer, api: str) -> str:
    return server.rest_url if api.endswith("-rest") else server.grpc_address


def served(server: RefServer) -> float:
    """Every request the server has answered with success, over every API."""
    text = requests.get(f"{server.rest_url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ovms_requests_success{"))


def wait_for_load(server: RefServer, proc: subprocess.Popen, more_than: int = 200, timeout: float = 40) -> None:
    """Until the load is under way (the server has answered ``more_than`` more requests): start-up takes from
    1 to several seconds on a busy 2-core machine, and a fault must land in the middle of a run."""
    base, deadline = served(server), time.monotonic() + timeout
    while served(server) - base <= more_than:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the load did not begin"
        time.sleep(0.1)


def finish(proc: subprocess.Popen, timeout: float = 60) -> LocustResult:
    out, err = proc.communicate(timeout=timeout)
    return LocustResult(proc.returncode, out, err)


#: what a request sees while nothing listens, or when the server dies under it
CONNECTION_STATUSES = {"tfs": {"UNAVAILABLE"}, "kfs": {"UNAVAILABLE"},
                       "tfs-rest": {"ConnectionRefusedError", "ConnectionResetError",
                                    "the server closed the connection before its reply was complete"}}


@pytest.mark.parametrize("api", ["kfs", "tfs-rest"])
def test_a_server_killed_and_started_again(tmp_path, api):
    """Requests fail with their real status while the server is down, the users come back when it is up, the
    run goes on; the result shows the failures by status and by second, and the gap."""
    out = tmp_path / "result.json"
    server = RefServer().start()
    users = 4
    try:
        proc = subprocess.Popen(locust_cmd(host_of(server, api), api, out, users=users, run_time="8s"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
        try:
            wait_for_load(server, proc)
            time.sleep(2.0)   # at least one whole second of load before the kill
            server.proc.send_signal(signal.SIGKILL)   # no goodbye: connections reset, then refused
            server.proc.wait(10)
            killed = time.time()
            time.sleep(2.0)
            server.start()                            # the same ports again
            restarted = time.time()
            result = finish(proc)
        finally:
            terminate(proc)
    finally:
        server.close()
    assert result.returncode == 1, result.stderr[-3000:]   # failed requests: Locust's exit code 1
    assert "Traceback" not in result.stderr
    doc = json.loads(out.read_text())
    s, rows = doc["statistics"], doc["timeline"]
    assert s["total_batches"] == result.requests and s["fail_batches"] == result.failures > 0
    statuses = set(s["errors_by_status"])
    assert statuses <= CONNECTION_STATUSES.get(api, set()) and statuses, statuses
    assert "UNAVAILABLE" in statuses or "ConnectionRefusedError" in statuses
    # the per-second rows: failures by status where they happened, and no passes while the server was down
    assert sum(sum(r.get("errors", {}).values()) for r in rows) == s["fail_batches"]
    assert all(sum(r.get("errors", {}).values()) == r["fail"] for r in rows)
    down = [r for r in rows if killed + 0.2 <= r["t"] and r["t"] + 1 <= restarted - 0.2]
    assert down and all(r["pass"] == 0 for r in down), rows
    assert any(r["fail"] for r in down)
    before = [r for r in rows if r["t"] + 1 <= killed - 0.2]
    after = [r for r in rows if r["t"] >= restarted + 1.5]   # back within the longest reconnect wait (1 s)
    assert before and all(r["pass"] > 0 for r in before)
    assert after and all(r["pass"] > 0 for r in after), rows
    # a user without a connection waits before trying again (0.05 s doubling to 1 s): a few failures per
    # user and second while the server is down, not the thousands of a busy loop
    assert s["fail_batches"] <= users * 12, s["fail_batches"]


@pytest.mark.parametrize("api", ["kfs", "kfs-rest"])
def test_a_frozen_server_times_out_and_the_run_ends_on_time(tmp_path, api):
    """A server that stops answering (SIGSTOP: connections still accepted, no replies) past --step_timeout:
    each request is cut at the timeout and counted, the run ends at its -t and does not hang."""
    out = tmp_path / "result.json"
    server = RefServer().start()
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(locust_cmd(host_of(server, api), api, out, "--step_timeout", "0.5", run_time="5s"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
        try:
            wait_for_load(server, proc)
            time.sleep(1.0)
            server.proc.send_signal(signal.SIGSTOP)
            frozen = time.time()
            result = finish(proc)
            took = time.monotonic() - t0
        finally:
            terminate(proc)
            server.proc.send_signal(signal.SIGCONT)
    finally:
        server.close()
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert took < 5 + 12, took   # start-up (2-6 s), the 5 s run, and at most one timeout to stop
    doc = json.loads(out.read_text())
    s = doc["statistics"]
    assert s["total_batches"] == result.requests and s["fail_batches"] == result.failures
    statuses = set(s["errors_by_status"])
    assert statuses == ({"DEADLINE_EXCEEDED"} if api == "kfs" else {"timed out after 0.5 s"}), statuses
    # each of the 4 users cut every 0.5 s from the freeze to the end (give or take the request in flight at each)
    expected = 4 * (doc["phases"]["stop"] - frozen) / 0.5
    assert abs(s["fail_batches"] - expected) <= 4 * 2, (s["fail_batches"], expected)
    assert s["fail_max_latency"] < 0.5 + 0.3   # cut at the timeout, not left hanging
    frozen_rows = [r for r in doc["timeline"] if r["t"] >= frozen + 0.6]
    assert frozen_rows and all(r["pass"] == 0 for r in frozen_rows)


def test_a_local_run_stopped_by_sigterm_writes_its_result(refserver, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.Popen(locust_cmd(refserver.grpc_address, "kfs", out, run_time="60s"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    try:
        wait_for_load(refserver, proc)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        result = finish(proc, 30)
    finally:
        terminate(proc)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["statistics"]["total_batches"] == result.requests > 100
    assert doc["phases"]["stop"] - doc["phases"]["t0"] < 10


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_master_stopped_by_a_signal_writes_what_its_workers_measured(refserver, tmp_path, sig):
    out = tmp_path / "result.json"
    master, workers = start_distributed(["--expect-workers", "2", "--headless", "-u", "4", "-r", "4", "-t", "60s",
                                         "--json", "--host", refserver.grpc_address, "--api", "kfs",
                                         "--model_name", "dummy", "--result_file", str(out)], cwd=tmp_path)
    try:
        wait_for_load(refserver, master)
        time.sleep(1.0)
        t = time.monotonic()
        master.send_signal(sig)
        result = finish(master, 40)
        took = time.monotonic() - t
        codes = [w.wait(20) for w in workers]   # the workers quit with the master
    finally:
        for p in [master, *workers]:
            terminate(p)
    assert took < 15 and codes == [0, 0], (took, codes)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert sorted(doc["workers"].values()) == ["final", "final"]   # both workers' final snapshots
    assert doc["statistics"]["submetrics"] == 2
    assert doc["statistics"]["total_batches"] == result.requests > 100


# --------------------------------------------------------------------------- where the result goes


def test_result_paths_that_cannot_be_written_are_refused(tmp_path):
    with pytest.raises(MetricsError, match=r"--result_file: the folder .*/nope does not exist; create it"):
        check_writable(str(tmp_path / "nope" / "r.json"), "result_file")
    with pytest.raises(MetricsError, match=r"--result_file: .* is a folder; give a file path"):
        check_writable(str(tmp_path), "result_file")
    with pytest.raises(MetricsError, match=r"--report_file: cannot write in /proc: .*; give a writable path"):
        check_writable("/proc/report.html", "report_file")
    check_writable(str(tmp_path / "r.json"), "result_file", seconds=3600)
    assert list(tmp_path.iterdir()) == []   # the probe is gone


def _mount_namespaces_work() -> bool:
    probe = Path("/tmp") / f"ovms-mnt-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "-o",
                               "size=64k", "tmpfs", str(probe)], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        probe.rmdir()


needs_tmpfs = pytest.mark.skipif(not _mount_namespaces_work(),
                                 reason="a full disk is made as a small tmpfs in a private mount namespace, which "
                                        "needs root (CAP_SYS_ADMIN); this machine refuses it")


def on_small_disk(disk: Path, size: str, fill_when: Path | None, cmd: list[str]) -> list[str]:
    """``cmd`` run where ``disk`` is a tmpfs of ``size`` that only it sees (gone with it); the disk is filled
    up at once, or once the file ``fill_when`` exists (at most 60 s later)."""
    fill = f"head -c 64M /dev/zero > {disk}/filler 2>/dev/null"
    wait = f"for i in $(seq 600); do [ -e {fill_when} ] && break; sleep 0.1; done"
    script = (f"mount -t tmpfs -o size={size} tmpfs {disk} || exit 97; "
              + (f"{fill}; " if fill_when is None else f"({wait}; {fill}) & ")
              + 'exec "$@"')
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd]


def counters(server: RefServer) -> float:
    text = requests.get(f"{server.rest_url}/metrics", timeout=5).text
    return scrape_counter(text, "ovms_requests_success", api="KServe", interface="gRPC", method="ModelInfer",
                          name="dummy", version="1")


@needs_tmpfs
def test_a_full_disk_is_refused_before_any_load(refserver, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    before = counters(refserver)
    cmd = locust_cmd(refserver.grpc_address, "kfs", disk / "result.json", run_time="3s")
    proc = subprocess.run(on_small_disk(disk, "1m", None, cmd), capture_output=True, text=True, timeout=60,
                          env=ENV, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert lines == [f"ovms: error: --result_file: cannot write in {disk}: No space left on device; free some "
                     "space or give a path on another disk"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert counters(refserver) == before   # no request was sent


@needs_tmpfs
def test_a_disk_that_fills_during_the_run_loses_no_result(refserver, tmp_path):
    disk, spare = tmp_path / "disk", tmp_path / "tmp"
    disk.mkdir()
    spare.mkdir()
    cmd = locust_cmd(refserver.grpc_address, "kfs", disk / "result.json", run_time="4s")
    trigger = tmp_path / "fill-now"
    proc = subprocess.Popen(on_small_disk(disk, "2m", trigger, cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**ENV, "TMPDIR": str(spare)}, cwd=tmp_path)
    try:
        wait_for_load(refserver, proc)   # past the start-up check: the disk fills during the run
        trigger.touch()
        result = finish(proc, 90)
    finally:
        terminate(proc)
    assert result.returncode == RESULT_EXIT_CODE, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    saved = sorted(spare.glob("ovms-result-*.json"))
    assert len(saved) == 1, list(spare.iterdir())
    line = next(x for x in result.stderr.splitlines() if "cannot write the result" in x)
    assert f"cannot write the result to {disk / 'result.json'} (No space left on device); it was written to " \
           f"{saved[0]} instead" in line
    doc = json.loads(saved[0].read_text())
    assert doc["statistics"]["total_batches"] == result.requests > 100


def test_fallback_to_stdout_when_no_file_can_be_written(refserver, tmp_path):
    """Neither --result_file nor $TMPDIR takes the file (both gone by the end): the result goes to stdout."""
    folder, spare = tmp_path / "out", tmp_path / "tmp"
    folder.mkdir()
    spare.mkdir()
    proc = subprocess.Popen(locust_cmd(refserver.grpc_address, "kfs", folder / "result.json", run_time="4s"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "TMPDIR": str(spare)}, cwd=tmp_path)
    try:
        wait_for_load(refserver, proc)   # after the start-up check, before the end
        folder.rmdir()
        spare.rmdir()
        result = finish(proc)
    finally:
        terminate(proc)
    assert result.returncode == RESULT_EXIT_CODE, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "it follows on stdout after 'OVMS-RESULT:'" in result.stderr
    text = next(x for x in result.stdout.splitlines() if x.startswith("OVMS-RESULT:"))
    doc = json.loads(text[len("OVMS-RESULT:"):])
    assert doc["statistics"]["total_batches"] > 100


if __name__ == "__main__":   # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
