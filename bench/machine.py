"""How fast and how quiet the machine was while the server-CPU figures were taken.

CPU milliseconds per operation depend on the machine as much as on the code: the same
commit measured 0.43 ms per selective query on one machine of this kind and 1.89 ms on
another (a slower host, busy neighbours). Two readings let a reader compare runs:

- ``reference_ms``: the CPU time of a fixed pure-Python workload (the interpreter's own
  work: loops, dict and str operations, as the server's Python code does), the least of
  a few tries, read in this process;
- ``CpuTimes``: /proc/stat's aggregate CPU line (proc(5)); its ``steal`` field is the
  time the hypervisor ran something else while this virtual machine wanted a CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

TRIES = 5  # runs of the workload per reading; the least counts


def _workload() -> int:
    """A fixed amount of interpreter work: about 25 ms of CPU on this project's 2-core
    x86_64 machines on a quiet day."""
    table: dict[str, int] = {}
    total = 0
    for i in range(120_000):
        key = f"k{i % 997}"
        table[key] = table.get(key, 0) + i
        total += len(key.upper()) + (i & 7)
    return total + sum(table.values())


def reference_ms(tries: int = TRIES) -> float:
    """CPU ms of ``_workload``, the least of ``tries`` runs (the least is the one the
    machine disturbed least)."""
    best = float("inf")
    for _ in range(tries):
        t0 = time.process_time()
        _workload()
        best = min(best, time.process_time() - t0)
    return best * 1000


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat, in clock ticks (proc(5))."""

    total: int
    steal: int

    @classmethod
    def read(cls, path: str = "/proc/stat") -> CpuTimes:
        with open(path) as f:
            fields = f.readline().split()
        if fields[0] != "cpu":
            raise ValueError(f"{path}: first line is not the aggregate cpu line")
        # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        # already counted in user and nice (proc(5)), so it is not added again
        ticks = [int(v) for v in fields[1:9]]
        ticks += [0] * (8 - len(ticks))
        return cls(total=sum(ticks), steal=ticks[7])

    def steal_percent_since(self, earlier: CpuTimes) -> float:
        elapsed = self.total - earlier.total
        return 100.0 * (self.steal - earlier.steal) / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class Reading:
    """The machine at the start and the end of a section."""

    reference_start_ms: float
    reference_end_ms: float
    steal_percent: float

    def line(self) -> str:
        return (
            f"Machine during this section (bench/machine.py): a fixed pure-Python workload "
            f"took {self.reference_start_ms:.1f} ms of CPU at its start and "
            f"{self.reference_end_ms:.1f} ms at its end (least of {TRIES} tries); the hypervisor "
            f"took {self.steal_percent:.1f} % of the CPU time as steal. CPU figures scale "
            "with that workload's time: compare runs on other machines by it."
        )


class Section:
    """``start()`` then ``stop()`` around a section: a ``Reading``."""

    def __init__(self) -> None:
        self._ref = 0.0
        self._cpu: CpuTimes | None = None

    def start(self) -> None:
        self._ref = reference_ms()
        self._cpu = CpuTimes.read()

    def stop(self) -> Reading:
        if self._cpu is None:
            raise RuntimeError("Section.stop() before start()")
        steal = CpuTimes.read().steal_percent_since(self._cpu)
        return Reading(self._ref, reference_ms(), steal)
