"""Where a run's result goes: checked before any load, written so that a failing disk loses nothing.

No Locust import here (the tests' process uses it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["MetricsError", "RESULT_EXIT_CODE", "check_writable", "check_outputs", "write_atomically"]

#: exit code of a run whose result could not be written to --result_file (it went to $TMPDIR, or to stdout)
RESULT_EXIT_CODE = 5
#: free space a result file needs at least, plus RESULT_BYTES_PER_S for each second of a run's -t: the
#: timeline holds a row per second (about 250 bytes as JSON), and the file is written beside its old copy
MIN_FREE_BYTES, RESULT_BYTES_PER_S = 1 << 20, 600


class MetricsError(ValueError):
    """A metrics option that cannot work; ``str()`` is the one-line message, starting with the option."""


def check_writable(path: str, option: str, seconds: float | None = None) -> None:
    """Raise MetricsError unless a file can be written at ``path`` now: its folder exists, takes a file, and
    has room for a result of a ``seconds``-long run. Checked before any load, so a run of hours does not
    end in a result that cannot be saved."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise MetricsError(f"--{option}: {path} is a folder; give a file path, e.g. {target / 'ovms-result.json'}")
    folder = target.parent
    if not folder.is_dir():
        raise MetricsError(f"--{option}: the folder {folder} does not exist; create it or give another path")
    need = MIN_FREE_BYTES + int(RESULT_BYTES_PER_S * (seconds or 0))
    full = "free some space or give a path on another disk"
    probe = folder / f".{target.name}.{os.getpid()}.probe"
    try:
        with open(probe, "wb") as f:   # a real write, flushed to the disk: a full or read-only one refuses it
            f.write(bytes(65536))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        hint = full if exc.errno == errno.ENOSPC else "give a writable path"
        raise MetricsError(f"--{option}: cannot write in {folder}: {exc.strerror or exc}; {hint}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    try:
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
    except OSError:
        return
    if free < need:
        raise MetricsError(f"--{option}: {folder} has {free // 1024} KiB free and the result needs about "
                           f"{need // 1024} KiB; {full}")


def check_outputs(opts: Any) -> None:
    """--result_file and --report_file can be written (MetricsError if not)."""
    tempfile.gettempdir()   # where a result goes if its own path fails at the end: chosen now, while it works
    run_time = getattr(opts, "run_time", None)
    seconds = float(run_time) if isinstance(run_time, (int, float)) else None
    for option in ("result_file", "report_file"):
        path = str(getattr(opts, option, "") or "").strip()
        if path:
            check_writable(path, option, seconds)


def write_atomically(target: Path, text: str) -> None:
    """``text`` into ``target`` through a temporary file beside it, never leaving a partial file behind."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
