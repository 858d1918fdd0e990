"""Locust users that drive inference: TFS and KServe v2, over gRPC and REST.

Each user has its own connection (HTTP/2 for gRPC, ovms_wire.h2grpc; keep-alive HTTP/1.1 for REST,
ovms_wire.http1), made in ``on_start`` (after any fork), connected on the first request and closed in
``on_stop``. The hot path picks the next request encoded before the test, splices in
the sequence fragment if the model is stateful, sends it, and fires Locust's ``request`` event;
the reply is not parsed.

Closed loop (the default), a user sends its next request when the previous one has finished. Open loop
(``--arrival_rate``, ``--max_throughput``), the users of a process are a pool that serves one shared
schedule of intended start times (ovms_users.arrivals): a free user claims the next one, sleeps until it
(interruptible by a stop, as Locust's own waits) or sends at once if it has passed. Its ``request`` event
then says ``response_time`` from the intended start, ``start_time`` the intended start (wall clock), and
``context["schedule_lag_ms"]`` how late it actually started.
"""

from __future__ import annotations

import logging
import random
import time

import gevent
import grpc
from locust import FastHttpUser, User, constant
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner
from locust.user.task import LOCUST_STATE_RUNNING, LOCUST_STATE_WAITING

from ovms_users.arrivals import SCHEDULE, Schedule
from ovms_users.errors import OvmsUserError
from ovms_users.options import BenchOptions
from ovms_users.senders import SENDERS
from ovms_users.workload import CACHE, SequenceIds, Workload

__all__ = ["ModelServerUser", "TfsGrpcUser", "KfsGrpcUser", "TfsRestUser", "KfsRestUser", "Sequence",
           "request_stop", "report_fatal"]

log = logging.getLogger("ovms_users")
STOP_MESSAGE, FATAL_MESSAGE, DONE_MESSAGE, BUSY_MESSAGE = "ovms_stop", "ovms_fatal", "ovms_done", "ovms_busy"
#: a user whose request failed for want of a connection (refused, lost, TLS) waits this long before its next
#: one, doubling up to BACKOFF_MAX_S (each wait jittered by +-20 %), until a request succeeds: gRPC's reconnect
#: backoff in spirit. A server that is down then costs a few counted failures per user and second, not a
#: busy loop of thousands, and users are back within BACKOFF_MAX_S of the server.
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.05, 1.0


def request_stop(environment, reason: str) -> None:
    """Stop the whole test from any process: a worker asks the master, others stop their runner."""
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message(STOP_MESSAGE, {"reason": reason})
        return
    headless = bool(getattr(environment.parsed_options, "headless", False))
    gevent.spawn(runner.quit if headless else runner.stop)


def report_fatal(environment, message: str) -> None:
    """A workload that cannot be built: one line, then the test stops with exit code 2."""
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message(FATAL_MESSAGE, {"message": message})
        return
    log.error("ovms: error: %s", message)
    environment.process_exit_code = 2
    request_stop(environment, message)


class Sequence:
    """A user's stateful sequences: position, id, and the three pre-serialized suffixes of the current id."""

    def __init__(self, workload: Workload, base: int, hop: int):
        self.workload, self.base, self.hop = workload, base, hop
        self.length = workload.options.stateful_length
        self.count = 0            # sequences started
        self.position = 0         # requests sent in the current sequence
        self.id = 0
        self.open = False
        self.close_stale = False  # a START met ALREADY_EXISTS: end that sequence first
        self._fragments: tuple[bytes, bytes, bytes] = (b"", b"", b"")

    def _new_id(self) -> None:
        self.id = SequenceIds.nth(self.base, self.hop, self.count)
        p = self.workload.protocol
        single = self.length == 1
        self._fragments = (p.sequence_fragment(self.id, True, single), p.sequence_fragment(self.id, False, False),
                           p.sequence_fragment(self.id, False, True))
        self.count += 1

    def next_fragment(self) -> bytes:
        if self.close_stale:
            return self._fragments[2]
        if self.position == 0:
            self._new_id()
            return self._fragments[0]
        return self._fragments[2] if self.position == self.length - 1 else self._fragments[1]

    def after(self, exc: Exception | None) -> None:
        ok = exc is None
        # a sequence id still open on the server: gRPC ALREADY_EXISTS, REST 409
        exists = getattr(exc, "code", None) == grpc.StatusCode.ALREADY_EXISTS or getattr(exc, "status", 0) == 409
        if self.close_stale:          # the cleanup END went out; start afresh with the same id
            self.close_stale, self.position, self.count = False, 0, self.count - 1
            return
        if not ok:                     # a broken sequence is abandoned; the next request starts a new one
            if self.position == 0 and exists:
                self.close_stale = True
            self.position, self.open = 0, False
            return
        self.position += 1
        self.open = True
        if self.position >= self.length:
            self.position, self.open = 0, False


class InferenceMixin:
    """The closed inference loop, for any API; the API comes from ``--api`` or the class's ``api``."""

    api: str | None = None
    environment: object
    host: str | None

    def on_start(self) -> None:
        env = self.environment
        try:
            opts = BenchOptions.parse(env.parsed_options) if env.parsed_options else BenchOptions.parse({})
            worker_index = getattr(env.runner, "worker_index", 0) or 0
            self.workload = CACHE.get(opts, self.host, worker_index, api=self.api)
            env.ovms_server = self.workload.server_info
            self.sender = SENDERS[self.workload.protocol.transport](self.workload, self)
        except OvmsUserError as exc:
            report_fatal(env, str(exc))
            raise StopUser() from None
        w = self.workload
        self._timeout = w.options.step_timeout
        self._size = len(w.requests)
        n, base, hop = w.sequence_ids.for_new_user()
        self._next = n % self._size    # users start at different entries, not in lockstep
        self.sequence = Sequence(w, base, hop) if w.options.stateful else None
        self._meta = (w.protocol.request_type, w.name, w.protocol.name, w.spec.name, w.spec.version)
        # the request event's context outside sequences, one per batch size: built once, shared, never changed
        self._contexts = {bs: {"frames": bs, "api": w.protocol.name, "model": w.spec.name, "version": w.spec.version,
                               "sequence_id": None} for bs in set(w.batch)}
        # requests this user may still send under --steps_number; None: no limit; then idle once it is 0
        self._left: int | None = w.options.steps_number or None
        self._idle = False
        self._backoff = 0.0   # the current reconnect wait (0: connected, or not yet failed)
        self._schedule: Schedule | None = None
        if w.options.open_loop:   # --arrival_rate / --max_throughput: this process's schedule, shared by its users
            configure_schedule(env, w.options, worker_index)
            SCHEDULE.join()
            self._schedule = SCHEDULE
        if self._left:
            w.active_users += 1
            runner = self.environment.runner
            if getattr(runner, "_ovms_done", False):   # more users after this process said it was done
                runner._ovms_done = False
                if isinstance(runner, WorkerRunner):
                    runner.send_message(BUSY_MESSAGE, {})

    def infer(self) -> None:
        if self._left is not None:
            if self._idle:   # done: idle (a stopped user would be re-spawned by Locust's ramp) until the end
                gevent.sleep(0.2)
                return
            if self._left == 0:
                self._idle = True
                self.workload.active_users -= 1
                check_done(self.environment)
                return
            self._left -= 1
        i = self._next
        self._next = i + 1 if i + 1 < self._size else 0
        w = self.workload
        if self.sequence is None:
            body, headers = w.requests[i]
        else:
            body, headers = w.protocol.request(w.encoded[i], self.sequence.next_fragment())
        if self._schedule is None:
            self._send(body, headers, w.batch[i])
        else:
            self._send_scheduled(body, headers, w.batch[i])

    tasks = [infer]   # a plain mixin: Locust collects `tasks` from the bases, not @task methods

    def _send(self, body: bytes, headers: dict[str, str], frames: int) -> None:
        """Closed loop: send now; the latency runs from now."""
        seq = self.sequence
        request_type, name, api, model, version = self._meta
        start_time = time.time()
        t0 = time.perf_counter()
        length, exc = self.sender.send(body, headers, self._timeout)
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=elapsed_ms, response_length=length,
            response=None, exception=exc, start_time=start_time, url=None,
            context=self._contexts[frames] if seq is None else
            {"frames": frames, "api": api, "model": model, "version": version, "sequence_id": seq.id})
        self._settle(seq, exc, name, frames, elapsed_ms)

    def _send_scheduled(self, body: bytes, headers: dict[str, str], frames: int) -> None:
        """Open loop: claim the schedule's next intended start, wait for it if it lies ahead, send; the latency
        runs from the intended start, and the lag (actual - intended start) goes with the event."""
        sched: Schedule = self._schedule   # type: ignore[assignment]
        due = sched.claim(frames)
        start = time.perf_counter()
        if due > start:
            # asleep like Locust's own waits: a stop ends the user here rather than after one more request
            self._state = LOCUST_STATE_WAITING
            gevent.sleep(due - start)
            self._state = LOCUST_STATE_RUNNING
            start = time.perf_counter()
            if start < due:   # woken a hair early: on time
                due = start
        length, exc = self.sender.send(body, headers, self._timeout)
        elapsed_ms = (time.perf_counter() - due) * 1000.0
        seq = self.sequence
        request_type, name, api, model, version = self._meta
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=elapsed_ms, response_length=length,
            response=None, exception=exc, start_time=due + sched.wall, url=None,
            context={"frames": frames, "api": api, "model": model, "version": version,
                     "sequence_id": None if seq is None else seq.id, "schedule_lag_ms": (start - due) * 1000.0})
        self._settle(seq, exc, name, frames, elapsed_ms)

    def _settle(self, seq: Sequence | None, exc: Exception | None, name: str, frames: int, elapsed_ms: float) -> None:
        """After a request's event: the sequence moves on, a failure is shown and counted, a success ends any
        reconnect backoff."""
        if seq is not None:
            seq.after(exc)
        if exc is not None:
            self._failed(exc, name, frames, elapsed_ms)
        elif self._backoff:
            self._backoff = 0.0

    def _failed(self, exc: Exception, name: str, frames: int, elapsed_ms: float) -> None:
        w = self.workload
        w.failures += 1
        shown = w.options.error_exposition
        if shown == 0 or w.failures <= shown:
            log.error("XE failed request %d (%s bs=%d) after %.2f ms: %s", w.failures, name, frames, elapsed_ms, exc)
        limit = w.options.error_limit
        if limit and w.failures > limit and not w.stop_requested:
            w.stop_requested = True
            reason = f"--error_limit {limit} exceeded: {w.failures} failed requests in this process"
            log.error("ovms: %s; stopping the test", reason)
            request_stop(self.environment, reason)
        if getattr(exc, "reconnect", False):
            self._wait_to_reconnect()

    def _wait_to_reconnect(self) -> None:
        """After a failure that left no connection: wait (BACKOFF_FIRST_S, doubling to BACKOFF_MAX_S) before the
        next attempt, asleep as Locust's own waits so that a stop ends the user here."""
        delay = self._backoff = min(self._backoff * 2, BACKOFF_MAX_S) if self._backoff else BACKOFF_FIRST_S
        self._state = LOCUST_STATE_WAITING
        gevent.sleep(delay * random.uniform(0.8, 1.2))
        self._state = LOCUST_STATE_RUNNING

    def on_stop(self) -> None:
        if getattr(self, "_left", None) and not self._idle:   # stopped (ramp-down) before its --steps_number
            self._idle = True
            self.workload.active_users -= 1
        if getattr(self, "_schedule", None) is not None:   # the pool shrinks; a worker's share follows its users
            self._schedule = None
            SCHEDULE.leave()
            if SCHEDULE.users:
                configure_schedule(self.environment, self.workload.options,
                                   getattr(self.environment.runner, "worker_index", 0) or 0)
        seq = getattr(self, "sequence", None)
        if seq is not None and seq.open:   # leave no open sequence on the server: end it (a counted request)
            seq.position = seq.length - 1
            w = self.workload
            self._send(*w.protocol.request(w.encoded[0], seq.next_fragment()), w.batch[0])
        sender = getattr(self, "sender", None)
        if sender is not None:
            sender.close()


class ModelServerUser(InferenceMixin, User):
    """Closed-loop inference over the API chosen by ``--api`` (or fixed by a subclass)."""
    abstract = True
    wait_time = constant(0)


class TfsGrpcUser(ModelServerUser):
    """TensorFlow Serving gRPC API (OVMS, TF Serving)."""
    abstract = True   # concrete in a locustfile: `class MyUser(TfsGrpcUser): pass`
    api = "tfs"


class KfsGrpcUser(ModelServerUser):
    """KServe v2 gRPC API (OVMS, Triton, MLServer, KServe)."""
    abstract = True
    api = "kfs"


class _RestUser(InferenceMixin, FastHttpUser):
    """A FastHttpUser: its connection settings apply, and ``self.client`` stays free for your own tasks."""
    abstract = True
    wait_time = constant(0)


class TfsRestUser(_RestUser):
    """TensorFlow Serving REST API (OVMS, TF Serving, KServe v1)."""
    abstract = True
    api = "tfs-rest"


class KfsRestUser(_RestUser):
    """KServe v2 REST API (OVMS, Triton, MLServer, KServe)."""
    abstract = True
    api = "kfs-rest"


def configure_schedule(environment, opts: BenchOptions, worker_index: int) -> None:
    """This process's share of the open-loop rate: the test's rate times its users over the test's users.

    A worker's users are those the master gave it (its target, set before they spawn); the test's users
    travel from the master (``ovms_users_total``, set at test start). A single process takes the whole rate.
    """
    rate = opts.arrival_rate or opts.max_throughput or 0.0
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        mine = max(int(getattr(runner, "target_user_count", 0) or 0), 1)
        total = int(getattr(environment.parsed_options, "ovms_users_total", 0) or 0) or mine
        rate *= min(1.0, mine / max(total, 1))
    SCHEDULE.configure(rate, per_frame=opts.arrival_rate is None, poisson=opts.arrivals == "poisson",
                       seed=opts.seed or 0, worker_index=worker_index)


def check_done(environment) -> None:
    """--steps_number: once every user of this process has sent its requests, the process is done; the test
    ends when every process is (a worker tells the master)."""
    runner = environment.runner
    spawning = runner.spawning_greenlet is not None and not runner.spawning_greenlet.dead
    workload = CACHE.current
    if (workload is not None and workload.active_users) or spawning or getattr(runner, "_ovms_done", False):
        return
    runner._ovms_done = True
    if isinstance(runner, WorkerRunner):
        runner.send_message(DONE_MESSAGE, {})
    else:
        request_stop(environment, "--steps_number reached")


def register_messages(environment) -> None:
    """Master side of request_stop/report_fatal/check_done."""
    runner = environment.runner
    environment.events.test_start.add_listener(lambda **_kw: setattr(runner, "_ovms_done", False))

    def steps_limited() -> bool:
        return bool(getattr(environment.parsed_options, "steps_number", "0") not in ("0", "", 0, None))

    if not isinstance(runner, MasterRunner):
        # a process whose users are all done after its spawning ends (or that got no users) is done
        environment.events.spawning_complete.add_listener(
            lambda **_kw: steps_limited() and gevent.spawn_later(0.05, check_done, environment))
        return
    done: set[str] = set()
    environment.events.test_start.add_listener(lambda **_kw: done.clear())

    def maybe_stop() -> None:
        if set(runner.clients) <= done and runner.state == "running" and not getattr(runner, "_ovms_done", False):
            runner._ovms_done = True
            log.info("ovms: every worker has sent its --steps_number requests; stopping the test")
            request_stop(environment, "--steps_number reached")

    def on_done(environment, msg, **kw) -> None:
        done.add(msg.node_id)
        maybe_stop()

    def on_busy(environment, msg, **kw) -> None:
        done.discard(msg.node_id)

    environment.events.spawning_complete.add_listener(lambda **_kw: steps_limited() and maybe_stop())

    def on_stop_message(environment, msg, **kw) -> None:
        log.error("ovms: worker %s: %s; stopping the test", msg.node_id, msg.data.get("reason"))
        request_stop(environment, msg.data.get("reason", ""))

    def on_fatal(environment, msg, **kw) -> None:
        if environment.process_exit_code != 2:
            log.error("ovms: error: %s", msg.data.get("message"))
            environment.process_exit_code = 2
            request_stop(environment, msg.data.get("message", ""))

    runner.register_message(STOP_MESSAGE, on_stop_message)
    runner.register_message(FATAL_MESSAGE, on_fatal)
    runner.register_message(DONE_MESSAGE, on_done)
    runner.register_message(BUSY_MESSAGE, on_busy)
