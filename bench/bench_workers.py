"""Three gunicorn workers pushing to the host sidecar, under load: what a push costs.

    python -m bench.bench_workers [--seconds 30] [--concurrency 600]

Starts, as real processes on loopback, the host sidecar (``python -m
ragobs.cli sidecar``) and ``gunicorn -w 3 -k aiohttp.GunicornWebWorker``
serving ``tests/deploy/app.py`` (100 tokens an answer, 20 ms apart, through
``ragobs.observe_stream``), then keeps ``--concurrency`` streaming requests
going for ``--seconds``; each reads its answer chunk by chunk and records the
gap between consecutive chunks as received. Three measured runs, interleaved:

* WITH pushes: every worker pushes to the sidecar every second;
* WITHOUT: the same, pushing every hour (nothing is pushed during the
  window; the sidecar process stays up, idle, and gets everything with the
  exit flush);
* WITH pushes again (A, B, A: drift on the machine hits both sides;
  ``--rounds N`` runs A, then N times B, A).

An unmeasured warm-up run (``--warmup`` seconds, 10) comes first.

Each run has its own gunicorn, started fresh. Reported: p50/p99 of the
inter-chunk gap per run and the p99 ratio WITH / WITHOUT (the issue's "no
request slowed by a push"), requests completed, the sidecar's CPU seconds
(``/proc/<pid>/stat``) and peak RSS (``VmHWM``, reset at the start of each
window through ``/proc/<pid>/clear_refs``) over the window; for context, the
workers' and this client's CPU and the machine's other load (on a shared
machine, other processes' CPU moves the p99 more than the pushes do: use
``--rounds`` for more runs on each side); then, ~3 push intervals after the
load stops and once gunicorn has stopped on SIGTERM (the workers' exit
flush), the sidecar's ``/api/summary`` ``total_requests`` against the
requests the client completed.

Bounded: loopback only, at most ``--concurrency`` requests at once, no new
request after ``--seconds``, each request cut after ``max(30 s, 10 answers)``,
a hard cap on the requests started, every process stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
WORKERS = 3
#: The longest push interval ragobs accepts: nothing is pushed during a window.
NO_PUSH_INTERVAL = 3600.0
TICKS = os.sysconf("SC_CLK_TCK")


# -- /proc ------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of ``/proc/<pid>/stat``)."""
    data = Path(f"/proc/{pid}/stat").read_text()
    fields = data[data.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / TICKS


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` (field 10 of ``/proc/<pid>/stat``)."""
    data = Path(f"/proc/{pid}/stat").read_text()
    return int(data[data.rindex(")") + 2:].split()[7])


def status_kib(pid: int, key: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(key + ":"):
            return int(row.split()[1])
    raise KeyError(key)


def reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (``echo 5 > clear_refs``), if allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def host_jiffies() -> tuple[int, int, int]:
    """(busy, total, irq + softirq) jiffies of the whole machine, from ``/proc/stat``.

    Interrupt time (loopback TCP's receive path runs in softirq) is given
    apart too; a tick taken in it is also charged to the process it
    interrupted, if any.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total, values[5] + values[6]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                data = (entry / "stat").read_text()
                if int(data[data.rindex(")") + 2:].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


# -- processes --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def _wait(condition: Callable[[], object], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not after {limit} s (last error: {last})")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, limit: float = 30) -> int:
    """Stop ``proc`` (started in a session of its own) and whatever is left of its group."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(limit)
        except subprocess.TimeoutExpired:
            # Not reaped yet, so the group id is still this one's.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


class Sidecar:
    """``python -m ragobs.cli sidecar --port P`` on loopback."""

    def __init__(self, logdir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = logdir / "sidecar.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ragobs.cli", "sidecar", "--host", HOST,
                 "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        _wait(lambda: _get(f"{self.url}/healthz"), 30, "the host sidecar answers")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(_get(f"{self.url}/api/summary"))
        return data

    def total(self) -> int:
        return int(self.summary()["total_requests"])

    def rejected(self) -> list[str]:
        """The sidecar's own counters of refused or dropped pushes (non-zero ones)."""
        text = _get(f"{self.url}/metrics").decode()
        return [row for row in text.splitlines()
                if row.startswith("ragobs_host_") and not row.endswith(" 0")
                and not row.endswith(" 0.0")]


class Gunicorn:
    """``gunicorn -w 3 -k aiohttp.GunicornWebWorker tests.deploy.app:app`` on loopback."""

    def __init__(self, sidecar: Sidecar, push_interval: float, token_delay: float,
                 logdir: Path, tag: str) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = dict(os.environ, RAGOBS_SIDECAR_URL=sidecar.url, PYTHONPATH=str(ROOT),
                   TEST_PUSH_INTERVAL=str(push_interval), TOKEN_DELAY=str(token_delay))
        self.log_path = logdir / f"gunicorn-{tag}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-w", str(WORKERS), "-b",
                 f"{HOST}:{self.port}", "-k", "aiohttp.GunicornWebWorker",
                 "--graceful-timeout", "10", "tests.deploy.app:app"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                start_new_session=True)
        _wait(lambda: _get(f"{self.url}/pid"), 60, "gunicorn answers")
        _wait(lambda: len(children(self.proc.pid)) == WORKERS, 30,
              f"gunicorn has {WORKERS} workers")
        self.workers = children(self.proc.pid)

    def stop(self) -> int:
        return _stop(self.proc)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


# -- the client -------------------------------------------------------------------------

@dataclass
class Load:
    gaps: array[float] = field(default_factory=lambda: array("d"))
    started: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    by_worker: Counter[str] = field(default_factory=Counter)
    #: Seconds from the first request to the last answer (the window).
    elapsed: float = 0.0


async def run_load(url: str, *, seconds: float, concurrency: int, tokens: int,
                   answer_s: float, max_requests: int, seed: int = 0) -> Load:
    """``concurrency`` streams kept going for ``seconds``; in-flight answers finish."""
    host = url.split("://", 1)[1].split(":", 1)[0]
    if host != HOST:
        raise ValueError(f"loopback only, not {host!r}")
    out = Load()
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    request_timeout = max(30.0, 10 * answer_s)
    ask = f"{url}/ask?tokens={tokens}"

    async def one(session: aiohttp.ClientSession) -> None:
        out.started += 1
        try:
            async with session.get(ask) as response:
                if response.status != 200:
                    out.errors[f"HTTP {response.status}"] += 1
                    await response.read()
                    return
                last: float | None = None
                received = 0
                async for data, _ in response.content.iter_chunks():
                    if not data:
                        continue
                    now = loop.time()
                    if last is not None:
                        out.gaps.append(now - last)
                    last = now
                    received += data.count(b" ")  # one space ends each token
                if received != tokens:
                    out.errors[f"short answer ({received}/{tokens} tokens)"] += 1
                    return
                out.completed += 1
                out.by_worker[response.headers.get("X-Worker-Pid", "?")] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.errors[type(exc).__name__] += 1

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = loop.time()
        deadline = t0 + seconds

        async def slot() -> None:
            # Staggered over one answer, as independent users are (not in lockstep).
            await asyncio.sleep(rng.uniform(0, min(answer_s, seconds)))
            while loop.time() < deadline and out.started < max_requests:
                await one(session)

        try:
            async with asyncio.timeout(seconds + request_timeout + 10):
                await asyncio.gather(*(slot() for _ in range(concurrency)))
        except TimeoutError:
            out.errors["cut at the hard time bound"] += 1
        out.elapsed = loop.time() - t0
    return out


# -- one run ----------------------------------------------------------------------------

def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class Run:
    name: str
    push_interval: float
    load: Load
    ordered: list[float]
    sidecar_cpu_s: float
    sidecar_peak_rss_kib: int
    sidecar_rss_start_kib: int
    peak_reset: bool
    workers_cpu_s: list[float]
    master_cpu_s: float
    client_cpu_s: float
    host_busy: float
    #: Interrupt CPU seconds on the machine (partly charged to the process that
    #: was running, so partly inside the figures above).
    irq_cpu_s: float
    #: Busy CPU seconds on the machine less the sidecar's, gunicorn's and this
    #: client's: other processes (tick-sampled, so +-1 s or so).
    other_cpu_s: float
    client_faults: int
    total_after_pushes: int
    total_after_exit: int
    summary: dict[str, Any]
    gunicorn_exit: int

    def gap_ms(self, q: float) -> float:
        return percentile(self.ordered, q) * 1e3


def one_run(name: str, push_interval: float, args: argparse.Namespace, sidecar: Sidecar,
            *, seconds: float, logdir: Path, completed_before: int) -> Run:
    server = Gunicorn(sidecar, push_interval, args.token_delay, logdir, name)
    try:
        answer_s = args.tokens * args.token_delay
        max_requests = args.concurrency * (int(seconds / max(answer_s, 0.05)) + 2)
        peak_reset = reset_peak_rss(sidecar.pid)
        rss_start = status_kib(sidecar.pid, "VmRSS")
        side0 = cpu_seconds(sidecar.pid)
        work0 = [cpu_seconds(pid) for pid in server.workers]
        master0 = cpu_seconds(server.proc.pid)
        self0 = cpu_seconds(os.getpid())
        faults0 = minor_faults(os.getpid())
        busy0, all0, irq0 = host_jiffies()
        load = asyncio.run(run_load(server.url, seconds=seconds,
                                    concurrency=args.concurrency, tokens=args.tokens,
                                    answer_s=answer_s, max_requests=max_requests,
                                    seed=len(name) + completed_before))
        busy1, all1, irq1 = host_jiffies()
        side_cpu = cpu_seconds(sidecar.pid) - side0
        work_cpu = [cpu_seconds(pid) - c for pid, c in zip(server.workers, work0, strict=True)]
        master_cpu = cpu_seconds(server.proc.pid) - master0
        client_cpu = cpu_seconds(os.getpid()) - self0
        client_faults = minor_faults(os.getpid()) - faults0
        peak = status_kib(sidecar.pid, "VmHWM")

        # ~3 push intervals for the last pushes, then the workers' exit flush.
        time.sleep(3 * args.push_interval)
        after_pushes = sidecar.total()
        code = server.stop()
        expected = completed_before + load.completed
        with contextlib.suppress(RuntimeError):  # the figures below say what arrived
            _wait(lambda: sidecar.total() == expected, 15, "the host total")
        summary = sidecar.summary()
    except BaseException:
        print(server.tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    return Run(name=name, push_interval=push_interval, load=load,
               ordered=sorted(load.gaps), sidecar_cpu_s=side_cpu, sidecar_peak_rss_kib=peak,
               sidecar_rss_start_kib=rss_start, peak_reset=peak_reset,
               workers_cpu_s=work_cpu, master_cpu_s=master_cpu, client_cpu_s=client_cpu,
               host_busy=(busy1 - busy0) / max(1, all1 - all0),
               irq_cpu_s=(irq1 - irq0) / TICKS,
               other_cpu_s=(busy1 - busy0) / TICKS
               - (side_cpu + sum(work_cpu) + master_cpu + client_cpu),
               client_faults=client_faults,
               total_after_pushes=after_pushes,
               total_after_exit=int(summary["total_requests"]), summary=summary,
               gunicorn_exit=code)


def report(run: Run, completed_before: int) -> None:
    load = run.load
    pushes = (f"every {run.push_interval:g} s" if run.push_interval < NO_PUSH_INTERVAL
              else "none in the window (interval 3600 s)")
    note = " (not in the figures)" if run.name == "warm-up" else ""
    print(f"-- {run.name}: pushes {pushes}{note}")
    print(f"   requests  started {load.started}  completed {load.completed}  "
          f"errors {dict(load.errors) or 0}  window {load.elapsed:.1f} s  "
          f"({load.completed / load.elapsed:.0f} answers/s)")
    print(f"   by worker {dict(sorted(load.by_worker.items()))}")
    print(f"   inter-chunk gap over {len(run.ordered)} gaps: p50 {run.gap_ms(50):.2f} ms  "
          f"p99 {run.gap_ms(99):.2f} ms  p99.9 {run.gap_ms(99.9):.2f} ms  "
          f"max {run.gap_ms(100):.1f} ms")
    rss = "" if run.peak_reset else " (VmHWM not reset: the process's lifetime peak)"
    print(f"   sidecar   CPU {run.sidecar_cpu_s:.2f} s over the window "
          f"({100 * run.sidecar_cpu_s / load.elapsed:.1f}% of a core)  "
          f"peak RSS {run.sidecar_peak_rss_kib / 1024:.1f} MiB{rss} "
          f"(RSS at the start {run.sidecar_rss_start_kib / 1024:.1f} MiB)")
    print(f"   context   workers CPU {' + '.join(f'{c:.1f}' for c in run.workers_cpu_s)} s, "
          f"client CPU {run.client_cpu_s:.1f} s ({run.client_faults} minor faults), "
          f"machine busy {100 * run.host_busy:.0f}% of {os.cpu_count()} cores: other "
          f"processes {run.other_cpu_s:.1f} CPU s, interrupts {run.irq_cpu_s:.1f} CPU s")
    expected = completed_before + load.completed
    verdict = "equal" if run.total_after_exit == expected else "NOT EQUAL"
    print(f"   host total_requests {run.total_after_pushes} after 3 push intervals, "
          f"{run.total_after_exit} after the exit flush (gunicorn exit {run.gunicorn_exit}); "
          f"client completed {expected} in all runs so far: {verdict}")
    s = run.summary
    print(f"   host summary: successful {s['successful']} failed {s['failed']} "
          f"cancelled {s['cancelled']} in_flight {s['in_flight']}")


# -- main -------------------------------------------------------------------------------

def main(seconds: float = 30.0, concurrency: int = 600, tokens: int = 100,
         token_delay: float = 0.02, push_interval: float = 1.0,
         *, rounds: int = 1, warmup: float = 10.0) -> dict[str, float]:
    """A warm-up, WITH, then ``rounds`` times (WITHOUT, WITH); the figures of every run.

    The warm-up (pushes on, not in the figures) is there because the first run
    in a fresh client process comes out slower than the next ones (its heap
    grows: about ten times the page faults); without it the first run, always
    a WITH run, biased the ratio upwards.
    """
    args = argparse.Namespace(seconds=seconds, concurrency=concurrency, tokens=tokens,
                              token_delay=token_delay, push_interval=push_interval)
    plan = [("warm-up", push_interval, warmup)] if warmup > 0 else []
    plan.append(("with-1", push_interval, seconds))
    for i in range(rounds):
        plan += [(f"without-{i + 1}", NO_PUSH_INTERVAL, seconds),
                 (f"with-{i + 2}", push_interval, seconds)]
    print(f"{WORKERS} gunicorn aiohttp workers, {concurrency} concurrent streams "
          f"({concurrency / WORKERS:.0f} a worker), {seconds:g} s a run, {tokens} tokens "
          f"an answer {token_delay * 1e3:g} ms apart, pushes every {push_interval:g} s; "
          f"{os.cpu_count()} cores; runs {', '.join(name for name, _, _ in plan)}", flush=True)
    runs: list[Run] = []
    completed = 0
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        logdir = Path(tmp)
        sidecar = Sidecar(logdir)
        try:
            for name, interval, window in plan:
                run = one_run(name, interval, args, sidecar, seconds=window, logdir=logdir,
                              completed_before=completed)
                report(run, completed)
                completed += run.load.completed
                if name != "warm-up":
                    runs.append(run)
            counters = sidecar.rejected()
            if runs[-1].total_after_exit != completed:
                print(f"   sidecar counters: {counters}")
                print(Path(sidecar.log_path).read_text(errors="replace")[-3000:])
        finally:
            _stop(sidecar.proc)
            signal.signal(signal.SIGTERM, previous)

    with_runs = [r for r in runs if r.push_interval < NO_PUSH_INTERVAL]
    without_runs = [r for r in runs if r.push_interval >= NO_PUSH_INTERVAL]
    pooled = sorted(g for r in with_runs for g in r.load.gaps)
    pooled_without = sorted(g for r in without_runs for g in r.load.gaps)
    p99_with = percentile(pooled, 99)
    p99_without = percentile(pooled_without, 99)
    ratio = p99_with / p99_without
    print(f"== p99 inter-chunk gap WITH pushes {p99_with * 1e3:.2f} ms, WITHOUT "
          f"{p99_without * 1e3:.2f} ms: ratio {ratio:.2f}x (gaps of every run pooled by "
          f"side; p99 by run: {', '.join(f'{r.name} {r.gap_ms(99):.1f}' for r in runs)} ms)")
    print(f"== p50 WITH {percentile(pooled, 50) * 1e3:.2f} ms, "
          f"WITHOUT {percentile(pooled_without, 50) * 1e3:.2f} ms")
    final = runs[-1]
    print(f"== host total_requests {final.total_after_exit}, client completed {completed}: "
          f"{'equal' if final.total_after_exit == completed else 'NOT EQUAL'}")
    figures: dict[str, float] = {
        "p99_gap_ratio": ratio,
        "p99_gap_with_ms": p99_with * 1e3,
        "p99_gap_without_ms": p99_without * 1e3,
        "p50_gap_with_ms": percentile(pooled, 50) * 1e3,
        "p50_gap_without_ms": percentile(pooled_without, 50) * 1e3,
        "host_total_requests": final.total_after_exit,
        "client_completed": completed,
    }
    for r in runs:
        key = r.name.replace("-", "_")
        figures.update({
            f"{key}_completed": r.load.completed,
            f"{key}_errors": sum(r.load.errors.values()),
            f"{key}_p50_gap_ms": r.gap_ms(50),
            f"{key}_p99_gap_ms": r.gap_ms(99),
            f"{key}_sidecar_cpu_s": r.sidecar_cpu_s,
            f"{key}_sidecar_peak_rss_mib": r.sidecar_peak_rss_kib / 1024,
            f"{key}_client_cpu_s": r.client_cpu_s,
            f"{key}_machine_busy": r.host_busy,
            f"{key}_irq_cpu_s": r.irq_cpu_s,
            f"{key}_other_cpu_s": r.other_cpu_s,
        })
    return figures


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=_positive(float), default=30.0,
                        help="seconds of load a run (30)")
    parser.add_argument("--concurrency", type=_positive(int), default=600,
                        help="concurrent streams over the 3 workers (600)")
    parser.add_argument("--tokens", type=_positive(int), default=100,
                        help="tokens an answer (100)")
    parser.add_argument("--token-delay", type=float, default=0.02,
                        help="seconds between tokens (0.02)")
    parser.add_argument("--push-interval", type=_positive(float), default=1.0,
                        help="push interval of the WITH runs (1)")
    parser.add_argument("--rounds", type=_positive(int), default=1,
                        help="WITH, then ROUNDS times WITHOUT, WITH (1: three runs)")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds of an unmeasured first run (10; 0: none)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    cli = parser.parse_args()
    result = main(cli.seconds, cli.concurrency, cli.tokens, cli.token_delay,
                  cli.push_interval, rounds=cli.rounds, warmup=cli.warmup)
    if cli.json:
        with open(cli.json, "w") as out:
            json.dump(result, out, indent=2)
