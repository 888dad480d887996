"""What the benchmarks that run whole builds measure about processes: CPU and peak memory.

CPU of a run: getrusage of the process and of its reaped children (Dask workers are reaped when
the cluster closes), plus psutil's cpu_times of descendants still alive (the ephemeral Prefect
server). Peak memory per process: a sampler thread in the parent polls the child's process tree,
since a process's own ru_maxrss is gone with it and RUSAGE_CHILDREN mixes every descendant.
In-process benchmarks (scene_render, renderers) time their cases with ``interleaved_medians``.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil


def rusage_cpu_s(who: int) -> float:
    """User + system CPU seconds of ``resource.RUSAGE_SELF`` or ``RUSAGE_CHILDREN``."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def live_descendants_cpu_s() -> tuple[float, list[str]]:
    """CPU seconds of this process's live descendants, and what they are (their command lines)."""
    total, names = 0.0, []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            total += t.user + t.system
            names.append(" ".join(p.cmdline()[1:4]))
    return total, names


@dataclass
class TreePeaks:
    """Peak RSS of a process and of each of its descendants, polled every ``interval_s``."""

    pid: int
    interval_s: float = 0.1
    peaks: dict[int, int] = field(default_factory=dict)
    cmdlines: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TreePeaks:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _poll(self) -> None:
        root = psutil.Process(self.pid)
        while not self._stop.is_set():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        rss = p.memory_info().rss
                        if rss > self.peaks.get(p.pid, 0):
                            self.peaks[p.pid] = rss
                            self.cmdlines.setdefault(p.pid, " ".join(p.cmdline()))
            time.sleep(self.interval_s)

    def root_peak(self) -> int:
        return self.peaks.get(self.pid, 0)

    def largest_descendant(self, exclude: tuple[str, ...] = ()) -> tuple[int, str]:
        """(peak RSS, command line) of the largest descendant whose command line contains none of
        ``exclude`` (e.g. the Prefect server)."""
        rows = [(rss, self.cmdlines.get(pid, "")) for pid, rss in self.peaks.items() if pid != self.pid
                and not any(x in self.cmdlines.get(pid, "") for x in exclude)]
        return max(rows, default=(0, ""))


def interleaved_medians(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median process-CPU seconds of each case over ``repeats`` rounds, after one warm-up call each
    (imports, filter design, FFT plans). Cases run interleaved, round by round, so a change in the
    machine's load touches every case alike and the ratios between them stay comparable."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t = time.process_time()
            fn()
            times[name].append(time.process_time() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}
