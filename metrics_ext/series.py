"""The OVMS metric set: one Series per phase (total, warmup, window), a per-second timeline, and a Recorder.

Phases are wall-clock intervals fixed once when the test starts and shared by every process:
``warmup = [t0, t0 + warmup)``, ``window = [t0 + warmup, t0 + warmup + window)`` (open-ended without
``--window``), ``total = [t0, stop)``. A request belongs to a phase by its completion time. A phase's
duration is its interval cut at the moment the test stopped, not at its first or last sample.

Open-loop (arrival-rate) runs also give each request's schedule lag (actual start - intended start);
its latency is then measured from the intended start, and each phase keeps the service time (from
the actual start) and the lag beside it (:class:`Lagged`).

:meth:`Recorder.record` is the hot path (once per request): it computes each histogram bucket once and
adds it to every series the request belongs to, with no allocation beyond a new bucket.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

from metrics_ext.stats import LogHistogram, Moments, OvmsHistogram, PackedHistogram, _bucket

__all__ = ["Series", "Lagged", "Phases", "Recorder", "WorkerPart", "TimelineSum", "QUANTILES", "OVMS_KEYS", "LATE_S",
           "LAGGED_QUANTILES"]


#: a request that started more than this after its intended start is counted late (``late_requests``):
#: twice the event loop's timer granularity (libev wakes a sleeper up to 1 ms late), so a run whose client
#: keeps up counts next to none
LATE_S = 0.002
#: the quantiles reported for the service time and the schedule lag
LAGGED_QUANTILES = (0.5, 0.99)

#: quantiles reported from the HDR-style histogram in every phase, beyond the original's set
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)

#: the original's 30 keys per series, in its order (spec section 8)
OVMS_KEYS = ("total_duration", "total_batches", "total_frames", "start_timestamp", "stop_timestamp", "pass_batches",
             "fail_batches", "pass_frames", "fail_frames", "first_latency", "pass_max_latency", "fail_max_latency",
             "brutto_batch_rate", "brutto_frame_rate", "netto_batch_rate", "netto_frame_rate", "frame_passrate",
             "batch_passrate", "mean_latency", "mean_latency2", "stdev_latency", "cv_latency", "pass_mean_latency",
             "pass_mean_latency2", "pass_stdev_latency", "pass_cv_latency", "fail_mean_latency", "fail_mean_latency2",
             "fail_stdev_latency", "fail_cv_latency")


def _cv(m: Moments) -> float:
    return m.stdev / m.mean if m.mean else 0.0


@dataclass
class Lagged:
    """One phase's open-loop extras: service time (actual start to completion) and schedule lag (actual minus
    intended start), each as sum (for the mean) and histogram (quantiles, max); and the late requests."""
    service: LogHistogram = field(default_factory=LogHistogram)
    lag: LogHistogram = field(default_factory=LogHistogram)
    service_sum: float = 0.0
    lag_sum: float = 0.0
    late: int = 0

    def add(self, service: float, lag: float, ks: int, kl: int) -> None:
        self.service.add(ks, service)
        self.lag.add(kl, lag)
        self.service_sum += service
        self.lag_sum += lag
        if lag > LATE_S:
            self.late += 1

    def merge(self, other: Lagged) -> None:
        self.service.merge(other.service)
        self.lag.merge(other.lag)
        self.service_sum += other.service_sum
        self.lag_sum += other.lag_sum
        self.late += other.late

    def to_dict(self) -> dict:
        return {"s": self.service.to_dict(), "l": self.lag.to_dict(), "ss": self.service_sum, "ls": self.lag_sum,
                "late": self.late}

    @classmethod
    def from_dict(cls, d: dict) -> Lagged:
        return cls(LogHistogram.from_dict(d["s"]), LogHistogram.from_dict(d["l"]), float(d["ss"]), float(d["ls"]),
                   int(d["late"]))

    def analyze(self, prefix: str = "") -> dict:
        """``service_latency_*`` and ``schedule_lag_*`` (mean, p50, p99, max; seconds) and ``late_requests``."""
        out: dict = {}
        for name, h, total in (("service_latency", self.service, self.service_sum),
                               ("schedule_lag", self.lag, self.lag_sum)):
            out[f"{prefix}{name}_mean"] = total / h.count if h.count else 0.0
            for q in LAGGED_QUANTILES:
                value = h.quantile(q)
                out[f"{prefix}{name}_p{_qname(q)}"] = value if value is not None else 0.0
            out[f"{prefix}{name}_max"] = h.max
        out[f"{prefix}late_requests"] = self.late
        return out


@dataclass
class Series:
    """Everything one phase needs, all of it mergeable."""
    pass_batches: int = 0
    fail_batches: int = 0
    pass_frames: int = 0
    fail_frames: int = 0
    ok: Moments = field(default_factory=Moments)
    bad: Moments = field(default_factory=Moments)
    pass_max: float = 0.0
    fail_max: float = 0.0
    first_done: float = math.inf     # completion time of the first successful request
    first_latency: float = math.inf  # ... and its latency
    hdr: LogHistogram = field(default_factory=LogHistogram)
    ovms: OvmsHistogram = field(default_factory=OvmsHistogram)
    errors: Counter = field(default_factory=Counter)
    lagged: Lagged | None = None     # open-loop runs only

    @property
    def all(self) -> Moments:
        """Every request's moments: the exact merge of the passed and the failed ones."""
        m = Moments(self.ok.n, self.ok.mean, self.ok.m2)
        m.merge(self.bad)
        return m

    def record(self, ok: bool, latency: float, frames: int, done: float, status: str | None,
               lag: float | None = None) -> None:
        self.add(ok, latency, frames, done, status, _bucket(latency),
                 int((self.ovms.factor * latency) ** self.ovms.base))
        if lag is not None:
            if self.lagged is None:
                self.lagged = Lagged()
            self.lagged.add(latency - lag, lag, _bucket(latency - lag), _bucket(lag))

    def add(self, ok: bool, latency: float, frames: int, done: float, status: str | None, k: int, o: int) -> None:
        """record() with the request's LogHistogram bucket ``k`` and OVMS histogram bucket ``o`` computed."""
        self.hdr.add(k, latency)
        b = self.ovms.buckets
        b[o] = b.get(o, 0) + frames
        if ok:
            self.pass_batches += 1
            self.pass_frames += frames
            m = self.ok   # Welford, as Moments.add
            n = m.n = m.n + 1
            delta = latency - m.mean
            m.mean += delta / n
            m.m2 += delta * (latency - m.mean)
            if latency > self.pass_max:
                self.pass_max = latency
            # the first success; ties in completion time: the smaller latency, in any order
            if done <= self.first_done and (done < self.first_done or latency < self.first_latency):
                self.first_done, self.first_latency = done, latency
        else:
            self.fail_batches += 1
            self.fail_frames += frames
            self.bad.add(latency)
            if latency > self.fail_max:
                self.fail_max = latency
            self.errors[status or "unknown"] += 1

    def merge(self, other: Series) -> None:
        self.pass_batches += other.pass_batches
        self.fail_batches += other.fail_batches
        self.pass_frames += other.pass_frames
        self.fail_frames += other.fail_frames
        self.ok.merge(other.ok)
        self.bad.merge(other.bad)
        self.pass_max = max(self.pass_max, other.pass_max)
        self.fail_max = max(self.fail_max, other.fail_max)
        # the first success of the merged run (the original took the largest); the same tie rule as record()
        if (other.first_done, other.first_latency) < (self.first_done, self.first_latency):
            self.first_done, self.first_latency = other.first_done, other.first_latency
        self.hdr.merge(other.hdr)
        self.ovms.merge(other.ovms)
        self.errors.update(other.errors)
        if other.lagged is not None:
            if self.lagged is None:
                self.lagged = Lagged()
            self.lagged.merge(other.lagged)

    def to_dict(self) -> dict:
        first = [None if math.isinf(v) else v for v in (self.first_done, self.first_latency)]
        d = {"c": [self.pass_batches, self.fail_batches, self.pass_frames, self.fail_frames],
             "m": [self.all.to_dict(), self.ok.to_dict(), self.bad.to_dict()],
             "x": [self.pass_max, self.fail_max], "f": first,
             "h": self.hdr.to_dict(), "o": self.ovms.to_dict(), "e": dict(self.errors)}
        if self.lagged is not None:
            d["s"] = self.lagged.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, factor: float, base: float) -> Series:
        s = cls(*d["c"])
        s.ok, s.bad = (Moments.from_dict(m) for m in d["m"][1:])   # d["m"][0], every request's, is their merge
        s.pass_max, s.fail_max = d["x"]
        s.first_done = math.inf if d["f"][0] is None else d["f"][0]
        s.first_latency = math.inf if d["f"][1] is None else d["f"][1]
        s.hdr = LogHistogram.from_dict(d["h"])
        s.ovms = OvmsHistogram(factor, base)
        s.ovms.merge_dict(d["o"])
        s.errors = Counter(d["e"])
        if d.get("s") is not None:
            s.lagged = Lagged.from_dict(d["s"])
        return s

    def analyze(self, start: float, stop: float, users: int, lagged: bool = False) -> dict:
        """The original's 30 keys (its formulas, computed on merged state), plus min latency and quantiles;
        with ``lagged`` (an open-loop run) also the service time, schedule lag and late-request keys.

        ``netto_*_rate``: the rate if every one of ``users`` closed-loop users spent no time outside its
        requests, ``pass * users / sum(latencies)``; the original summed per-process netto rates, which is the
        same for equal processes and meaningless for unequal ones.
        """
        duration = max(0.0, stop - start)
        batches = self.pass_batches + self.fail_batches
        frames = self.pass_frames + self.fail_frames
        every = self.all
        busy = every.total / max(users, 1)
        out = {
            "total_duration": duration, "total_batches": batches, "total_frames": frames,
            "start_timestamp": start, "stop_timestamp": stop,
            "pass_batches": self.pass_batches, "fail_batches": self.fail_batches,
            "pass_frames": self.pass_frames, "fail_frames": self.fail_frames,
            "first_latency": self.first_latency, "pass_max_latency": self.pass_max, "fail_max_latency": self.fail_max,
            "brutto_batch_rate": self.pass_batches / duration if duration else 0.0,
            "brutto_frame_rate": self.pass_frames / duration if duration else 0.0,
            "netto_batch_rate": self.pass_batches / busy if busy else 0.0,
            "netto_frame_rate": self.pass_frames / busy if busy else 0.0,
            "frame_passrate": self.pass_frames / frames if frames else 0.0,
            "batch_passrate": self.pass_batches / batches if batches else 0.0,
        }
        for prefix, m in (("", every), ("pass_", self.ok), ("fail_", self.bad)):
            out[f"{prefix}mean_latency"] = m.mean
            out[f"{prefix}mean_latency2"] = m.mean2
            out[f"{prefix}stdev_latency"] = m.stdev
            out[f"{prefix}cv_latency"] = _cv(m)   # the fail series uses its own deviation (the original's typo)
        out["min_latency"] = self.hdr.min if self.hdr.count else 0.0
        for q in QUANTILES:
            value = self.hdr.quantile(q)
            out[f"latency_p{_qname(q)}"] = value if value is not None else 0.0
        if lagged:
            out.update((self.lagged or Lagged()).analyze())
        out["errors_by_status"] = dict(sorted(self.errors.items()))
        return out


def _qname(q: float) -> str:
    text = f"{q * 100:.3f}".rstrip("0").rstrip(".")
    return text.replace(".", "_")


@dataclass(frozen=True)
class Phases:
    """The phase edges, fixed once at test start (wall-clock seconds) and shared by every process."""
    t0: float
    warmup: float = 0.0
    window: float | None = None

    @property
    def warmup_end(self) -> float:
        return self.t0 + self.warmup

    @property
    def window_end(self) -> float:
        return math.inf if self.window is None else self.warmup_end + self.window

    def of(self, done: float) -> str | None:
        """The phase (besides total) a request completed at ``done`` belongs to."""
        if done < self.warmup_end:
            return "warmup"
        if done < self.window_end:
            return "window"
        return None

    def to_dict(self) -> dict:
        return {"t0": self.t0, "warmup": self.warmup, "window": self.window}

    @classmethod
    def from_dict(cls, d: dict) -> Phases:
        return cls(float(d["t0"]), float(d["warmup"]), None if d["window"] is None else float(d["window"]))


class Recorder:
    """One process's measurements: the three series and a per-second timeline, as one mergeable snapshot."""

    def __init__(self, phases: Phases, hist_factor: float = 100.0, hist_base: float = 1.5):
        self.phases = phases
        self.factor, self.base = hist_factor, hist_base
        self.series = {name: self._new() for name in ("total", "warmup", "window")}
        self.timeline: dict[int, list] = {}   # second -> [pass, fail, frames, LogHistogram, {status: fails} or None]
        self.by_batch: dict[int, Series] = {}  # batch size -> the window's requests of that size
        self.last_done = 0.0                  # the latest completion time recorded
        # while the window has seen one batch size only, by_batch holds the window series itself for it (the
        # same requests): one series fewer to update per request; a second size splits them (_split_batches)
        self._solo: int | None = None
        # the hot path's shortcuts: the series (merges update them in place), the phase edges, the current second
        self._total, self._warmup, self._window = self.series["total"], self.series["warmup"], self.series["window"]
        self._warmup_end, self._window_end = phases.warmup_end, phases.window_end
        self._sec, self._cell = None, None   # the timeline's latest second and its cell

    def _new(self) -> Series:
        return Series(ovms=OvmsHistogram(self.factor, self.base))

    def record(self, ok: bool, latency: float, frames: int, done: float, status: str | None = None,
               lag: float | None = None) -> None:
        """One request: its latency (seconds), frames, completion time (wall clock), failure status; in an
        open-loop run its schedule lag (seconds; ``latency`` then runs from the intended start)."""
        if done > self.last_done:
            self.last_done = done
        # the buckets, once: LogHistogram's (stats._bucket) and the OVMS histogram's
        k = _bucket(latency)
        o = int((self.factor * latency) ** self.base)
        self._total.add(ok, latency, frames, done, status, k, o)
        if done < self._warmup_end:
            phase: Series | None = self._warmup
        elif done < self._window_end:
            phase = self._window
            if frames != self._solo:
                if not self.by_batch:   # the window's first request: its batch size is the window's so far
                    self._solo = frames
                    self.by_batch[frames] = phase
                else:
                    if self._solo is not None:
                        self._split_batches()
                    per = self.by_batch.get(frames)
                    if per is None:
                        per = self.by_batch[frames] = self._new()
                    per.add(ok, latency, frames, done, status, k, o)
        else:
            phase = None
        if phase is not None:
            phase.add(ok, latency, frames, done, status, k, o)
        sec = int(done)
        cell = self._cell
        if sec != self._sec:
            cell = self._enter(sec)
        if ok:
            cell[0] += 1
        else:
            cell[1] += 1
            errors = cell[4]
            if errors is None:
                errors = cell[4] = {}
            key = status or "unknown"
            errors[key] = errors.get(key, 0) + 1
        cell[2] += frames
        cell[3].add(k, latency)
        if lag is not None:
            self._record_lag(latency - lag, lag, phase)

    def _enter(self, sec: int) -> list:
        """The timeline's cell for a new current second; the second left behind is packed (it is complete,
        unless the clock steps back, and then it is unpacked again here)."""
        if self._cell is not None and isinstance(self._cell[3], LogHistogram):
            self._cell[3] = PackedHistogram.of(self._cell[3])
        cell = self.timeline.get(sec)
        if cell is None:
            cell = self.timeline[sec] = [0, 0, 0, LogHistogram(), None]
        elif isinstance(cell[3], PackedHistogram):
            cell[3] = cell[3].thaw()
        self._sec, self._cell = sec, cell
        return cell

    def _split_batches(self) -> None:
        """A second batch size in the window: the first size's requests so far become a series of their own."""
        solo, self._solo = self._solo, None
        if solo is not None:
            self.by_batch[solo] = self._batch_copy(self._window)

    def _batch_copy(self, series: Series) -> Series:
        return Series.from_dict(self._batch_dict(series), self.factor, self.base)

    @staticmethod
    def _batch_dict(series: Series) -> dict:
        d = series.to_dict()
        d.pop("s", None)   # the breakdown by batch size has no open-loop part (the window's, while it stands in)
        return d

    def _record_lag(self, service: float, lag: float, phase: Series | None) -> None:
        """The open-loop part of record(): the service time and the lag, in the total and the request's phase."""
        ks, kl = _bucket(service), _bucket(lag)
        total = self._total.lagged
        if total is None:
            total = self._total.lagged = Lagged()
        total.add(service, lag, ks, kl)
        if phase is not None:
            part = phase.lagged
            if part is None:
                part = phase.lagged = Lagged()
            part.add(service, lag, ks, kl)

    def snapshot(self, drain: bool = False) -> dict:
        """Everything, as plain data. ``drain``: the timeline holds only what was recorded since the previous
        drain, and leaves this recorder (a worker's report: the master adds the timeline's parts up, in any
        order, so neither the report's cost nor the worker's memory grows with the run). The series and
        breakdowns are cumulative and whole either way (their size is fixed)."""
        if drain:
            cells = sorted(self.timeline.items())
            self.timeline = {}
            self._sec, self._cell = None, None
        else:
            cells = list(self.timeline.items())
        return {"phases": self.phases.to_dict(), "factor": self.factor, "base": self.base, "last": self.last_done,
                "series": {k: s.to_dict() for k, s in self.series.items()},
                "timeline": [[sec, c[0], c[1], c[2], c[3].to_dict(), c[4]] for sec, c in cells],
                "by_batch": [[bs, self._batch_dict(s)] for bs, s in self.by_batch.items()], "drained": drain}

    def merge_snapshot(self, snap: dict, series_only: bool = False) -> None:
        self._split_batches()   # merged into, the window and its one batch size part ways
        self.last_done = max(self.last_done, snap.get("last", 0.0))
        for name, d in snap["series"].items():
            self.series[name].merge(Series.from_dict(d, self.factor, self.base))
        if series_only:   # the phases' statistics only (a live view): the timeline costs most of a merge
            return
        for row in snap["timeline"]:
            add_row(self.timeline, row)
        for bs, d in snap.get("by_batch", ()):
            per = self.by_batch.get(bs)
            if per is None:
                per = self.by_batch[bs] = self._new()
            per.merge(Series.from_dict(d, self.factor, self.base))

    @classmethod
    def merged(cls, snapshots: list[dict], series_only: bool = False) -> Recorder:
        first = snapshots[0]
        rec = cls(Phases.from_dict(first["phases"]), first["factor"], first["base"])
        for snap in snapshots:
            rec.merge_snapshot(snap, series_only)
        return rec


def add_row(cells: dict[int, list], row: list) -> None:
    """Add a snapshot's timeline row ``[sec, pass, fail, frames, histogram, {status: fails} or None]`` (the
    histogram as a dict, packed or not) into ``cells`` (second -> cell); a packed cell is unpacked first."""
    sec, ok, bad, frames, hist, *more = row
    cell = cells.get(sec)
    if cell is None:
        cell = cells[sec] = [0, 0, 0, LogHistogram(), None]
    elif isinstance(cell[3], PackedHistogram):
        cell[3] = cell[3].thaw()
    cell[0] += ok
    cell[1] += bad
    cell[2] += frames
    cell[3].merge(hist if isinstance(hist, (PackedHistogram, LogHistogram)) else LogHistogram.from_dict(hist))
    if more and more[0]:
        errors = cell[4]
        if errors is None:
            errors = cell[4] = {}
        for key, n in more[0].items():
            errors[key] = errors.get(key, 0) + n


class WorkerPart:
    """What the master holds of one worker: its latest report without the timeline (the series and
    breakdowns, cumulative and fixed in size). The reports' timelines go to the master's TimelineSum."""

    def __init__(self) -> None:
        self.head: dict | None = None
        self.reported_at = 0.0   # when its latest report (or final) arrived, wall clock

    def apply(self, snap: dict, timeline: TimelineSum) -> None:
        self.head = {k: v for k, v in snap.items() if k not in ("timeline", "drained")}
        self.reported_at = time.time()
        timeline.add(snap["timeline"])

    def snapshot(self) -> dict:
        assert self.head is not None
        return {**self.head, "timeline": []}


class TimelineSum:
    """The per-second timeline of a distributed run, added up from the workers' drained reports (each
    carries what its worker recorded since its previous report). Counts, errors and histograms add, so the
    order of reports does not matter; seconds more than KEEP_OPEN_S behind the newest are packed (8 bytes a
    bucket), so the master holds about a kilobyte per second of the run, whatever the number of workers."""
    KEEP_OPEN_S = 10

    def __init__(self) -> None:
        self.cells: dict[int, list] = {}
        self._open: set[int] = set()
        self._newest: int | None = None

    def add(self, rows: list) -> None:
        for row in rows:
            sec = row[0]
            add_row(self.cells, row)
            self._open.add(sec)
            if self._newest is None or sec > self._newest:
                self._newest = sec
        if self._newest is not None:
            for sec in [t for t in self._open if t < self._newest - self.KEEP_OPEN_S]:
                self.cells[sec][3] = PackedHistogram.of(self.cells[sec][3])
                self._open.discard(sec)

    def rows(self) -> list:
        """The timeline as a snapshot's rows (histograms as they are: merge_snapshot takes either kind)."""
        return [[sec, c[0], c[1], c[2], c[3], c[4]] for sec, c in sorted(self.cells.items())]
