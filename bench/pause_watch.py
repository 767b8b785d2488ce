"""Stop-the-world pauses inside the server process, seen from the server (issue 18).

    python bench/pause_watch.py CONTROL_FD ANSWER_FD serve ARGS...

starts the server exactly as ``python -m worklist_mpps serve ARGS...`` does (the CLI's
``main``, same arguments, same code path) with one more thread, idle until told: it
reads commands from CONTROL_FD, one a line, and answers one JSON line each on ANSWER_FD
(two pipes bench/cpu_servers.py passes):

    start   reset the figures, start the watchdog and the GC timers
    stop    stop them; answer the phase's figures (Watchdog.figures)

While started, the watchdog thread sleeps ``interval`` (2 ms) again and again and
records how late it wakes: a thread holding the GIL (a long C call, a GC pass) or
anything else that stops Python in the process delays it. Each wake reads the thread's
run-queue wait (/proc/self/task/TID/schedstat, field 2: ns runnable but not running)
and the process's CPU time, so that lateness from a saturated CPU (the clients, other
processes; the GIL holder itself descheduled) is told apart from a pause of the
process's own making (``pause``: lateness less the run-queue wait, at most the CPU the
process spent meanwhile).
``gc.callbacks`` time every collection by generation. While stopped, nothing of this
runs: the CPU figures are measured with the watchdog off (bench/cpu_run.py).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import threading
import time

INTERVAL = 0.002
MAX_SAMPLES = 2_000_000  # 70 min at 2 ms: a phase is seconds


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _stacks(depth: int = 4) -> dict[str, list[str]]:
    """The innermost ``depth`` frames of every other thread, by thread name."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    out = {}
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        lines = []
        while frame is not None and len(lines) < depth:
            code = frame.f_code
            lines.append(f"{code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {code.co_name}")
            frame = frame.f_back
        out[f"{names.get(ident, '?')}-{ident}"] = lines
    return out


class Watchdog:
    """A thread that sleeps ``interval`` seconds in a loop and records how late it wakes
    (milliseconds), and gc.callbacks timing each collection; ``start``/``stop``."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reset()

    def _reset(self) -> None:
        self.late_ms: list[float] = []
        self.in_process_ms: list[float] = []
        self.busy_ms: list[float] = []
        self.worst_at = 0.0  # perf_counter() when the longest in-process lateness ended
        self.worst_stacks: dict[str, list[str]] = {}
        self.gc_ms: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.gc_spans: list[tuple[float, float, int]] = []  # passes over 1 ms
        self.gc_cpu_ms: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._gc_t0 = self._gc_c0 = 0.0
        self.t0 = time.perf_counter()
        self.t1 = self.t0

    def _on_gc(self, phase: str, info: dict) -> None:
        """gc.callbacks: a pass's wall time and its thread's CPU time (the pass runs in
        the thread that triggered it; wall > CPU: that thread was descheduled)."""
        if phase == "start":
            self._gc_t0, self._gc_c0 = time.perf_counter(), time.thread_time()
        elif self._gc_t0:
            end, ms = time.perf_counter(), (time.thread_time() - self._gc_c0) * 1000
            wall = (end - self._gc_t0) * 1000
            self.gc_ms[info["generation"]].append(wall)
            self.gc_cpu_ms[info["generation"]].append(ms)
            if wall > 1:
                self.gc_spans.append((self._gc_t0, end, info["generation"]))
            self._gc_t0 = 0.0

    def _run(self) -> None:
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        try:
            fd: int | None = os.open(path, os.O_RDONLY)
        except OSError:  # no schedstat in this kernel: all lateness counts as in-process
            fd = None

        def run_delay() -> int:
            return int(os.pread(fd, 128, 0).split()[1]) if fd is not None else 0

        sleep, clock, cpu = time.sleep, time.perf_counter, time.process_time
        interval, worst = self.interval, 0.0
        wait0, cpu0 = run_delay(), cpu()
        while not self._stop.is_set() and len(self.late_ms) < MAX_SAMPLES:
            t0 = clock()
            sleep(interval)
            t1 = clock()
            wait1, cpu1 = run_delay(), cpu()
            late = (t1 - t0 - interval) * 1000
            own = max(0.0, late - (wait1 - wait0) / 1e6)
            busy = min(own, (cpu1 - cpu0) * 1000)
            wait0, cpu0 = wait1, cpu1
            self.late_ms.append(late)
            self.in_process_ms.append(own)
            self.busy_ms.append(busy)
            if busy > worst:
                worst, self.worst_at = busy, t1
                if own > 10:  # where the other threads are now, just after the pause
                    self.worst_stacks = _stacks()
        if fd is not None:
            os.close(fd)

    def start(self) -> None:
        self.stop()
        self._reset()
        self._stop.clear()
        gc.callbacks.append(self._on_gc)
        self._thread = threading.Thread(target=self._run, name="pause-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.t1 = time.perf_counter()
            gc.callbacks.remove(self._on_gc)
        return self.figures()

    def figures(self) -> dict:
        """The phase's figures, milliseconds: how late the watchdog woke (``late``),
        the same less its own run-queue wait (``in_process``), and that bounded by the
        process's CPU time meanwhile (``pause``: lateness while the process itself ran,
        a thread holding the GIL; not a GIL holder descheduled by a saturated CPU);
        max, p99.9, count over 10 ms; the longest GC pass by generation (wall time, and
        its thread's CPU time), and the
        generations of the passes that overlapped the longest pause."""
        late, own, busy = sorted(self.late_ms), sorted(self.in_process_ms), sorted(self.busy_ms)
        worst = busy[-1] if busy else 0.0
        start = self.worst_at - (worst + self.interval * 1000) / 1000
        during_gc = [g for a, b, g in self.gc_spans if a < self.worst_at and b > start]
        running = self._thread is not None
        return {
            "seconds": (time.perf_counter() if running else self.t1) - self.t0,
            "wakes": len(late),
            "late_max_ms": late[-1] if late else 0.0,
            "late_p999_ms": _quantile(late, 0.999),
            "in_process_max_ms": own[-1] if own else 0.0,
            "in_process_p999_ms": _quantile(own, 0.999),
            "pause_max_ms": worst,
            "pause_p999_ms": _quantile(busy, 0.999),
            "pause_over_10ms": sum(1 for v in busy if v > 10),
            "gc_max_ms": {str(g): max(v, default=0.0) for g, v in self.gc_ms.items()},
            "gc_cpu_max_ms": {str(g): max(v, default=0.0) for g, v in self.gc_cpu_ms.items()},
            "gc_count": {str(g): len(v) for g, v in self.gc_ms.items()},
            "worst_during_gc": during_gc,
            "worst_stacks": self.worst_stacks,
        }


def control(watchdog: Watchdog, commands, answers) -> None:
    """Answer ``start`` / ``stop`` lines from ``commands`` on ``answers`` until EOF."""
    for line in commands:
        cmd = line.strip()
        if cmd == "start":
            watchdog.start()
            answer: dict = {"ok": True}
        elif cmd == "stop":
            answer = {"ok": True, **watchdog.stop()}
        else:
            answer = {"ok": False, "error": f"unknown command {cmd!r}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


class PauseControl:
    """The bench's side of the two pipes: ``start()`` and ``stop()`` -> figures."""

    def __init__(self, control_fd: int, answer_fd: int, timeout: float = 60) -> None:
        self.commands = os.fdopen(control_fd, "w")
        self.answers = os.fdopen(answer_fd, "r")
        self.timeout = timeout

    def ask(self, cmd: str) -> dict:
        import select

        self.commands.write(cmd + "\n")
        self.commands.flush()
        if not select.select([self.answers], [], [], self.timeout)[0]:
            raise RuntimeError(f"pause watchdog: no answer to {cmd!r} in {self.timeout} s")
        answer = json.loads(self.answers.readline() or '{"error": "server exited"}')
        if not answer.get("ok"):
            raise RuntimeError(f"pause watchdog: {answer.get('error')}")
        return answer

    def start(self) -> None:
        self.ask("start")

    def stop(self) -> dict:
        return self.ask("stop")

    def close(self) -> None:
        for f in (self.commands, self.answers):
            with contextlib.suppress(OSError):
                f.close()


def main() -> int:
    control_fd, answer_fd = int(sys.argv[1]), int(sys.argv[2])
    commands = os.fdopen(control_fd, "r")
    answers = os.fdopen(answer_fd, "w")
    threading.Thread(
        target=control, args=(Watchdog(), commands, answers), name="pause-control", daemon=True
    ).start()
    from worklist_mpps.cli.main import main as serve

    sys.argv = ["worklist-mpps", *sys.argv[3:]]
    return serve()


if __name__ == "__main__":
    sys.exit(main())
