"""Metric math: small value objects that hold only mergeable state, and pure functions over them.

Every accumulator has ``merge`` (associative and commutative), ``to_dict`` and ``from_dict`` (plain
lists and numbers, so msgpack and JSON carry them). Means, deviations, rates and quantiles are
computed once, from merged state; averages are never averaged.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

__all__ = ["Moments", "LogHistogram", "PackedHistogram", "OvmsHistogram", "GAMMA", "MIN_LATENCY_S", "MAX_LATENCY_S"]

#: Bucket growth of LogHistogram: a bucket's geometric middle is within sqrt(GAMMA) - 1 = 0.499 % of any
#: value in it, so every reported quantile is within 0.5 % of the exact order statistic.
GAMMA = 1.01
MIN_LATENCY_S = 1e-6     # 1 microsecond
MAX_LATENCY_S = 3600.0   # 1 hour
_LOG_GAMMA = math.log(GAMMA)
_MAX_INDEX = int(math.log(MAX_LATENCY_S / MIN_LATENCY_S) / _LOG_GAMMA) + 1


@dataclass
class Moments:
    """Count, mean and sum of squared deviations (Welford), merged with Chan et al.'s formula."""
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def merge(self, other: Moments) -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean, other.m2
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n

    @property
    def total(self) -> float:
        return self.mean * self.n

    @property
    def variance(self) -> float:
        """Population variance, as the OVMS client defines its deviation (but computed stably)."""
        return self.m2 / self.n if self.n else 0.0

    @property
    def stdev(self) -> float:
        return math.sqrt(max(self.variance, 0.0))

    @property
    def mean2(self) -> float:
        """The mean of squares, the OVMS client's ``mean_latency2``."""
        return self.variance + self.mean * self.mean if self.n else 0.0

    def to_dict(self) -> list:
        return [self.n, self.mean, self.m2]

    @classmethod
    def from_dict(cls, d: list) -> Moments:
        return cls(int(d[0]), float(d[1]), float(d[2]))


def _bucket(value_s: float) -> int:
    if value_s <= MIN_LATENCY_S:
        return 0
    return min(int(math.log(value_s / MIN_LATENCY_S) / _LOG_GAMMA), _MAX_INDEX)


@dataclass
class LogHistogram:
    """An HDR-style histogram of latencies in seconds: log buckets of width GAMMA from 1 us to 1 hour."""
    buckets: dict[int, int] = field(default_factory=dict)
    count: int = 0
    min: float = math.inf
    max: float = 0.0

    def record(self, value_s: float, weight: int = 1) -> None:
        self.add(_bucket(value_s), value_s, weight)

    def add(self, k: int, value_s: float, weight: int = 1) -> None:
        """record() with the value's bucket ``k = _bucket(value_s)`` already computed (shared by several)."""
        self.buckets[k] = self.buckets.get(k, 0) + weight
        self.count += weight
        if value_s < self.min:
            self.min = value_s
        if value_s > self.max:
            self.max = value_s

    def merge(self, other: LogHistogram) -> None:
        for k, c in other.buckets.items():
            self.buckets[k] = self.buckets.get(k, 0) + c
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float | None:
        """The nearest-rank q-quantile (the smallest value with at least q of the samples at or below it)."""
        if not self.count:
            return None
        if q <= 0:
            return self.min
        rank = max(1, math.ceil(q * self.count - 1e-9))
        seen = 0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen >= rank:
                middle = MIN_LATENCY_S * GAMMA ** (k + 0.5) if k else MIN_LATENCY_S
                return min(max(middle, self.min), self.max)
        return self.max

    def bins(self) -> list[list[float]]:
        """The non-empty buckets in order, as ``[low_s, high_s, count]``: the histogram to plot."""
        out = []
        for k in sorted(self.buckets):
            low = MIN_LATENCY_S * GAMMA ** k if k else 0.0
            out.append([low, MIN_LATENCY_S * GAMMA ** (k + 1), self.buckets[k]])
        return out

    def to_dict(self) -> dict:
        return {"b": [[k, c] for k, c in self.buckets.items()], "n": self.count,
                "min": None if self.count == 0 else self.min, "max": self.max}

    @classmethod
    def from_dict(cls, d: dict) -> LogHistogram:
        return cls({int(k): int(c) for k, c in d["b"]}, int(d["n"]), math.inf if d["min"] is None else d["min"],
                   float(d["max"]))


class PackedHistogram:
    """A LogHistogram that no longer changes (a past second of the timeline), packed: each non-empty bucket
    is its index (2 bytes: there are fewer than 65536) and its count (2 bytes, or 4 if any count needs it),
    so a long run's per-second histograms cost a few hundred bytes a second, not ten kilobytes. It merges
    into a LogHistogram and answers ``quantile`` and ``to_dict`` as one."""
    __slots__ = ("index", "counts", "count", "min", "max")

    def __init__(self, buckets: dict[int, int], count: int, low: float, high: float):
        keys = sorted(buckets)
        values = [buckets[k] for k in keys]
        self.index = array("H", keys).tobytes()
        self.counts = array("H" if not values or max(values) < 65536 else "I", values)
        self.count, self.min, self.max = count, low, high

    @classmethod
    def of(cls, hist: LogHistogram) -> PackedHistogram:
        return cls(hist.buckets, hist.count, hist.min, hist.max)

    @classmethod
    def from_dict(cls, d: dict) -> PackedHistogram:
        return cls({int(k): int(c) for k, c in d["b"]}, int(d["n"]), math.inf if d["min"] is None else d["min"],
                   float(d["max"]))

    @property
    def buckets(self) -> dict[int, int]:
        index = array("H")
        index.frombytes(self.index)
        return dict(zip(index, self.counts, strict=True))

    @property
    def nbytes(self) -> int:
        """The packed buckets' size in bytes."""
        return len(self.index) + len(self.counts) * self.counts.itemsize

    def thaw(self) -> LogHistogram:
        return LogHistogram(self.buckets, self.count, self.min, self.max)

    def quantile(self, q: float) -> float | None:
        return self.thaw().quantile(q)

    def to_dict(self) -> dict:
        return self.thaw().to_dict()


@dataclass
class OvmsHistogram:
    """The OVMS client's histogram: bucket ``int((factor * latency) ** base)``, weighted by frames."""
    factor: float = 100.0
    base: float = 1.5
    buckets: dict[int, int] = field(default_factory=dict)

    def record(self, latency_s: float, frames: int) -> None:
        k = int((self.factor * latency_s) ** self.base)
        self.buckets[k] = self.buckets.get(k, 0) + frames

    def merge(self, other: OvmsHistogram) -> None:
        for k, c in other.buckets.items():
            self.buckets[k] = self.buckets.get(k, 0) + c

    def bounds(self, k: int) -> tuple[float, float]:
        """Bucket k spans [k^(1/base)/factor, (k+1)^(1/base)/factor) seconds."""
        return k ** (1 / self.base) / self.factor, (k + 1) ** (1 / self.base) / self.factor

    def quantile(self, q: float) -> tuple[float | str, float]:
        """The original's interpolated quantile and its error (the bucket width); ``("", 0)`` when fewer than
        6 frames lie above it, as the original reports."""
        total = sum(self.buckets.values())
        if (1 - q) * total < 6:
            return "", 0.0
        remaining = total
        for k in sorted(self.buckets, reverse=True):
            weight = self.buckets[k]
            remaining -= weight
            if remaining <= q * total:
                lo, hi = self.bounds(k)
                return lo + (hi - lo) * (q * total - remaining) / weight, hi - lo
        lo, hi = self.bounds(0)
        return lo, hi - lo

    def to_dict(self) -> list:
        return [[k, c] for k, c in self.buckets.items()]

    def merge_dict(self, d: list) -> None:
        for k, c in d:
            self.buckets[int(k)] = self.buckets.get(int(k), 0) + int(c)
