"""Open-loop load: one schedule of intended start times per load process, shared by its users.

``--arrival_rate R`` (requests/s) or ``--max_throughput F`` (frames/s) is the rate of the whole test; each
process takes the share ``rate * its users / the test's users``. The schedule is a sequence of intended
start times ``t_k`` (perf_counter seconds): constant spacing, or exponential gaps (Poisson arrivals) from a
generator seeded with ``--seed`` (0 without it) and the process's worker index. A user that is free claims
the next ``t_k``, sleeps until it if it lies ahead, and sends at once if it has passed: a late request is
sent late, never skipped, and its lag (actual start - ``t_k``) is measured. At most one request per user is
in flight, so the users (``-u``) bound the concurrency.

No Locust import here: the schedule is plain arithmetic, usable (and tested) on its own.
"""

from __future__ import annotations

import math
import random
import time

__all__ = ["Schedule", "SCHEDULE"]

_log = math.log


class Schedule:
    """One process's intended start times; its users join it (``on_start``) and leave it (``on_stop``)."""

    def __init__(self) -> None:
        self.rate = 0.0          # this process's share: requests/s, or frames/s when per_frame
        self.per_frame = False   # --max_throughput: each request advances the schedule by its batch size
        self.gap = math.inf      # seconds per request (or per frame) at this share
        self.next = 0.0          # the next intended start (perf_counter seconds)
        self.wall = 0.0          # wall clock minus perf_counter when the schedule started (event start times)
        self.users = 0           # users of this process in the pool
        self.poisson = False
        self._random = random.random

    def configure(self, rate: float, per_frame: bool, poisson: bool, seed: int, worker_index: int) -> None:
        """Set this process's share of the test's rate (``rate``: already the share); before the first user joins,
        also the generator of the gaps."""
        self.rate, self.per_frame, self.poisson = rate, per_frame, poisson
        self.gap = 1.0 / rate if rate > 0 else math.inf
        if self.users == 0:
            # a str seed is hashed with SHA-512: the same gaps in every run, process and platform
            self._random = random.Random(f"ovms-arrivals:{seed}:{worker_index}").random

    def join(self) -> None:
        """A user enters the pool; the first one starts the schedule now."""
        if self.users == 0:
            self.next = time.perf_counter()
            self.wall = time.time() - self.next
        self.users += 1

    def leave(self) -> None:
        self.users = max(0, self.users - 1)

    def claim(self, frames: int = 1) -> float:
        """The next intended start time, taken by the caller; the schedule moves on by one gap."""
        t = self.next
        gap = self.gap * frames if self.per_frame else self.gap
        if self.poisson:
            gap *= -_log(1.0 - self._random())   # an exponential variate of mean 1 (random() < 1: finite)
        self.next = t + gap
        return t


#: the schedule of this load process (one per process, like the workload cache)
SCHEDULE = Schedule()
