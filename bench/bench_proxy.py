"""``ragobs proxy`` against calling the upstream directly: what the proxy adds.

    python -m bench.bench_proxy [--quick] [--memory-streams 10000] [--litellm PATH]

Three real processes on loopback, started fresh (four with LiteLLM):

* an upstream: an aiohttp server that streams OpenAI Chat Completions
  chunks (role chunk, N content chunks, finish chunk, usage chunk when
  asked, ``[DONE]``), each content chunk carrying the moment it was written
  (``time.perf_counter()``, CLOCK_MONOTONIC: comparable across processes);
* the ragobs proxy in front of it (``ragobs.proxy.start_proxy``, the same
  setup as ``ragobs proxy``: measured, usage asked for and stripped, admin
  surface on);
* a bare relay in front of it: the few lines of aiohttp any Python
  pass-through proxy is (forward the request, write each read as it comes),
  measuring nothing: what a proxy costs before ragobs does anything;
* with ``RAGOBS_BENCH_LITELLM`` (or ``--litellm``) naming the ``litellm`` CLI
  of a venv of its own (``pip install 'litellm[proxy]'``, kept out of this
  environment and its pins), LiteLLM's proxy in front of the same upstream:
  one ``openai/`` model, no database, no master key, no telemetry, local cost
  map, one worker. Unset: its column is skipped, and the output says so.

This process is the client (plain aiohttp, reading the SSE bytes). Figures,
for answers of 100 and 1,000 tokens:

* TTFT (client-measured, request to first content) p50/p99, direct and
  through each proxy, requests interleaved (direct, relay, proxy, direct...)
  so that load from elsewhere hits every side alike; the TTFT added is the
  difference of the percentiles;
* per-chunk latency: from the upstream writing a content chunk to the client
  having it, p50/p99 over every chunk (chunks paced 1 ms apart);
* CPU per streamed answer of the proxy process (``/proc/<pid>/stat``), over
  unpaced streams 8 at a time, against the bare relay's (and the upstream's
  own, for scale): medians of three interleaved rounds;
* the proxy's own figure, ``ragobs.proxy.overhead``, over the latency runs;
* memory: the proxy's RSS after a warm-up and after ``--memory-streams``
  (10,000) more streams of 100 tokens, 50 at a time, against the relay's
  (of the whole process tree for LiteLLM, as for its CPU).

With LiteLLM, the same figures for it, and ragobs / LiteLLM ratios at the
end. LiteLLM spends about 100x ragobs's CPU per answer, so its streams are
the long part of a run: ~20 min at the default ``--memory-streams``.

Ratios are against the direct baseline (latency) or the bare relay (CPU,
memory) measured in the same run. The proxy's ``/metrics`` must count every
stream it carried (checked at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.bench_workers import (
    HOST,
    _free_port,
    _get,
    _stop,
    _wait,
    children,
    cpu_seconds,
    status_kib,
)

ROOT = Path(__file__).resolve().parent.parent
SIZES = (100, 1_000)
PACE = 0.001  # seconds between paced content chunks
ROUNDS = 3
#: When the upstream wrote a content chunk: its text is ``@<perf_counter>``. In the text, not
#: in a field of its own, because LiteLLM rebuilds every chunk and keeps only the known fields.
_STAMP = re.compile(rb'"content": ?"@([0-9.]+)"')
#: The LiteLLM CLI (``litellm[proxy]`` in a venv of its own); unset: that column is skipped.
LITELLM_ENV = "RAGOBS_BENCH_LITELLM"
_LITELLM_HOW = (f"set {LITELLM_ENV}=/tmp/litellm-venv/bin/litellm after `python3 -m venv "
                "/tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'`")
_BASE = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
         "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench"}


# --- the processes ----------------------------------------------------------------------


def _chunk(choices: list[dict[str, Any]], asked: bool, **extra: Any) -> bytes:
    body: dict[str, Any] = {**_BASE, "choices": choices, **extra}
    if asked and "usage" not in body:
        body["usage"] = None  # as the API sends every chunk when usage is asked for
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


async def _upstream(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    # In the prompt: LiteLLM does not pass a client's own headers on.
    n, pace = (float(x) for x in body["messages"][-1]["content"].split())
    n = int(n)
    asked = bool((body.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "x-request-id": "req_bench"})
    await response.prepare(request)
    await response.write(_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                  "finish_reason": None}], asked))
    for _ in range(n):
        if pace:
            await asyncio.sleep(pace)
        await response.write(_chunk([{"index": 0, "delta": {
            "content": f"@{time.perf_counter():.9f}"}, "finish_reason": None}], asked))
    await response.write(_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], asked))
    if asked:
        await response.write(_chunk([], asked, usage={"prompt_tokens": 12,
                                                       "completion_tokens": n,
                                                       "total_tokens": n + 12}))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _relay_app(upstream: str) -> web.Application:
    """The bare relay: forward, write each read as it comes, measure nothing."""
    session: list[aiohttp.ClientSession] = []

    async def client(app: web.Application) -> Any:
        session.append(aiohttp.ClientSession(auto_decompress=False))
        yield
        await session[0].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        async with session[0].post(upstream + request.raw_path, data=body,
                                   headers=headers) as answer:
            response = web.StreamResponse(status=answer.status, headers={
                "Content-Type": answer.headers.get("Content-Type", "")})
            await response.prepare(request)
            async for data in answer.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(client)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


async def _serve(role: str, port: int, upstream: str) -> None:
    if role == "proxy":
        from ragobs.proxy import ProxyConfig, Upstream, start_proxy

        admin_port = int(os.environ["BENCH_ADMIN_PORT"])
        await start_proxy(ProxyConfig(upstreams=(Upstream(upstream),)), host=HOST, port=port,
                          admin_port=admin_port, service_name="bench-proxy")
    else:
        app = web.Application() if role == "upstream" else _relay_app(upstream)
        if role == "upstream":
            app.router.add_post("/v1/chat/completions", _upstream)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, HOST, port).start()
    await asyncio.Event().wait()


@dataclass
class Process:
    role: str
    port: int
    proc: subprocess.Popen[bytes]
    admin: int | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


def _start(role: str, upstream: str = "") -> Process:
    port = _free_port()
    env = dict(os.environ)
    admin = None
    if role == "proxy":
        admin = _free_port()
        env["BENCH_ADMIN_PORT"] = str(admin)
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_proxy", "--serve", role,
                             "--port", str(port), "--upstream", upstream],
                            cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = Process(role, port, proc, admin)
    _wait(lambda: _probe(found.url), 30, f"the {role} answers")
    return found


def _start_litellm(exe: str, upstream: str, workdir: Path) -> Process:
    """LiteLLM's proxy in front of the same upstream: one model, no database, no calls out."""
    port = _free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: gpt-4o-mini\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
        "  turn_off_message_logging: true\n")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
           "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True",
           # No key checked, as ragobs checks none (loopback only): neither pays for auth.
           "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    for key in ("DATABASE_URL", "LITELLM_MASTER_KEY", "REDIS_HOST"):
        env.pop(key, None)
    with open(workdir / "litellm.log", "wb") as log:
        proc = subprocess.Popen([exe, "--config", str(config), "--host", HOST, "--port", str(port),
                                 "--num_workers", "1"], cwd=workdir, env=env,
                                start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    found = Process("litellm", port, proc)
    try:
        _wait(lambda: _get(found.url + "/health/liveliness"), 120, "LiteLLM answers")
    except RuntimeError:
        _stop(proc)
        raise RuntimeError("LiteLLM did not start; its log: "
                           + (workdir / "litellm.log").read_text()[-2000:]) from None
    return found


def _tree(pid: int) -> list[int]:
    found = [pid]
    for child in children(pid):
        found += _tree(child)
    return found


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (LiteLLM may fork workers)."""
    return sum(cpu_seconds(p) for p in _tree(pid))


def _tree_rss_kib(pid: int) -> int:
    return sum(status_kib(p, "VmRSS") for p in _tree(pid))


def _probe(url: str) -> bool:
    try:
        _get(url + "/")
    except Exception as exc:  # a 404 / 405 answer is up; a refused connection is not
        return "HTTP Error" in str(exc)
    return True


# --- the client -------------------------------------------------------------------------


@dataclass
class Figures:
    ttft: list[float] = field(default_factory=list)
    chunk: list[float] = field(default_factory=list)


async def _stream(session: aiohttp.ClientSession, url: str, n: int, pace: float,
                  figures: Figures | None) -> None:
    t0 = time.perf_counter()
    async with session.post(f"{url}/v1/chat/completions",
                            json={"model": "gpt-4o-mini", "stream": True,
                                  "messages": [{"role": "user", "content": f"{n} {pace}"}]},
                            headers={"Authorization": "Bearer bench"}) as response:
        assert response.status == 200, response.status
        rest = b""
        first = True
        async for data in response.content.iter_any():
            now = time.perf_counter()
            if figures is None:
                continue
            rest += data
            *events, rest = rest.split(b"\n\n")
            for event in events:
                found = _STAMP.search(event)
                if found is None:
                    continue
                wrote = float(found.group(1))
                if first:
                    figures.ttft.append(now - t0)
                    first = False
                figures.chunk.append(now - wrote)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _warm(targets: dict[str, str]) -> None:
    """Connections, imports and caches, before anything is measured."""
    async with aiohttp.ClientSession() as session:
        for url in targets.values():
            for n in SIZES:
                for _ in range(5):
                    await _stream(session, url, n, 0.0, None)


async def _latency(targets: dict[str, str], n: int, streams: int) -> dict[str, Figures]:
    figures = {name: Figures() for name in targets}
    async with aiohttp.ClientSession() as session:
        for _ in range(streams):
            for name, url in targets.items():
                await _stream(session, url, n, PACE, figures[name])
    return figures


async def _load(url: str, n: int, streams: int, concurrency: int) -> None:
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        queue = iter(range(streams))

        async def worker() -> None:
            for _ in queue:
                await _stream(session, url, n, 0.0, None)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _cpu(processes: list[Process],
         run: Callable[[], Coroutine[Any, Any, None]]) -> dict[str, float]:
    before = {p.role: _tree_cpu(p.pid) for p in processes}
    asyncio.run(run())
    return {p.role: _tree_cpu(p.pid) - before[p.role] for p in processes}


def _buckets(admin: int, sample: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram ``sample`` (summed over series), by ``le``."""
    text = _get(f"http://{HOST}:{admin}/metrics").decode()
    found: dict[float, float] = {}
    for row in text.splitlines():
        if row.startswith(sample + "_bucket{"):
            le = float(re.search(r'le="([^"]+)"', row).group(1))  # type: ignore[union-attr]
            found[le] = found.get(le, 0.0) + float(row.rsplit(" ", 1)[1])
    return found


def _quantile(buckets: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` (as Prometheus reads buckets)."""
    total = max(buckets.values())
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le
    return float("inf")


def _metric(admin: int, sample: str) -> float:
    text = _get(f"http://{HOST}:{admin}/metrics").decode()
    return sum(float(row.rsplit(" ", 1)[1]) for row in text.splitlines()
               if row.startswith(sample + "{") or row.startswith(sample + " "))


def _ratio(ours: float, theirs: float) -> str:
    if ours < 0 or theirs <= 0:  # a difference of percentiles: noise in the direct baseline
        return "n/a (an added figure below 0)"
    return f"x{ours / theirs:.2f}"


def main(quick: bool = False, memory_streams: int = 10_000,
         litellm: str | None = None) -> dict[str, float]:
    figures: dict[str, float] = {}
    litellm = litellm or os.environ.get(LITELLM_ENV) or None
    upstream = _start("upstream")
    relay = _start("relay", upstream.url)
    proxy = _start("proxy", upstream.url)
    workdir = tempfile.TemporaryDirectory(prefix="bench-litellm-")
    them: Process | None = None
    if not litellm:
        print(f"LiteLLM column skipped: {_LITELLM_HOW}")
    carried = 0
    try:
        if litellm:
            them = _start_litellm(litellm, upstream.url, Path(workdir.name))
        targets = {"direct": upstream.url, "relay": relay.url, "proxy": proxy.url}
        if them is not None:
            targets["litellm"] = them.url
        measured = [name for name in targets if name != "direct"]
        asyncio.run(_warm(targets))
        carried += 5 * len(SIZES)
        assert proxy.admin is not None
        warm = (_metric(proxy.admin, "ragobs_proxy_overhead_seconds_sum"),
                _metric(proxy.admin, "ragobs_proxy_overhead_seconds_count"))
        warm_buckets = _buckets(proxy.admin, "ragobs_proxy_overhead_seconds")
        for n in SIZES:
            streams = (30 if quick else 150) if n == 100 else (8 if quick else 30)
            found = asyncio.run(_latency(targets, n, streams))
            carried += streams
            base = found["direct"]
            for name in measured:
                f = found[name]
                for what, values, ref in (("TTFT", f.ttft, base.ttft),
                                          ("per-chunk latency", f.chunk, base.chunk)):
                    p50, p99 = _pct(values, 0.5), _pct(values, 0.99)
                    b50, b99 = _pct(ref, 0.5), _pct(ref, 0.99)
                    print(f"{name:<7} {n:>5,}-token answers  {what:<17} p50 {p50 * 1e3:7.3f} ms "
                          f"(+{(p50 - b50) * 1e3:6.3f}, x{p50 / b50:5.2f})  p99 "
                          f"{p99 * 1e3:7.3f} ms (+{(p99 - b99) * 1e3:6.3f}, x{p99 / b99:5.2f})  "
                          f"direct p50 {b50 * 1e3:.3f} / p99 {b99 * 1e3:.3f} ms")
                    key = "ttft" if what == "TTFT" else "chunk"
                    figures[f"{name}_{key}_added_p50_ms_{n}"] = (p50 - b50) * 1e3
                    figures[f"{name}_{key}_added_p99_ms_{n}"] = (p99 - b99) * 1e3
        own = (_metric(proxy.admin, "ragobs_proxy_overhead_seconds_sum") - warm[0]) / (
            _metric(proxy.admin, "ragobs_proxy_overhead_seconds_count") - warm[1])
        buckets = {le: n - warm_buckets.get(le, 0.0) for le, n in
                   _buckets(proxy.admin, "ragobs_proxy_overhead_seconds").items()}
        print(f"the proxy's own figure, ragobs.proxy.overhead, one stream at a time: mean "
              f"{own * 1e3:.3f} ms a call, p50 <= {_quantile(buckets, 0.5) * 1e3:g} ms, "
              f"p99 <= {_quantile(buckets, 0.99) * 1e3:g} ms (bucket bounds)")
        figures["proxy_overhead_mean_ms"] = own * 1e3
        sides = [relay, proxy] + ([them] if them is not None else [])
        for n in SIZES:
            streams = (100 if n == 100 else 20) if quick else (300 if n == 100 else 60)
            spent: dict[str, list[float]] = {p.role: [] for p in sides}
            spent["upstream"] = []
            for _ in range(ROUNDS):  # interleaved: load from elsewhere hits every side
                for target in sides:
                    cpu = _cpu([upstream, target],
                               functools.partial(_load, target.url, n, streams, 8))
                    spent[target.role].append(cpu[target.role] / streams)
                    spent["upstream"].append(cpu["upstream"] / streams)
                carried += streams
            mid = {role: statistics.median(values) for role, values in spent.items()}
            ratio = mid["proxy"] / mid["relay"]
            print(f"CPU per {n:,}-token answer (median of {ROUNDS} rounds of {streams}): proxy "
                  f"{mid['proxy'] * 1e3:.2f} ms, bare relay {mid['relay'] * 1e3:.2f} ms "
                  f"(x{ratio:.2f}); the upstream writing it {mid['upstream'] * 1e3:.2f} ms"
                  + (f"; LiteLLM (its process tree) {mid['litellm'] * 1e3:.2f} ms"
                     if them is not None else ""))
            for role, spent_ms in mid.items():
                if role != "upstream":
                    figures[f"{role}_cpu_ms_{n}"] = spent_ms * 1e3
            figures[f"proxy_cpu_ratio_{n}"] = ratio
        rss: dict[str, tuple[int, int]] = {}
        for target in sides:
            asyncio.run(_load(target.url, 100, 500, 50))
            before = _tree_rss_kib(target.pid)
            asyncio.run(_load(target.url, 100, memory_streams, 50))
            rss[target.role] = (before, _tree_rss_kib(target.pid))
        carried += 500 + memory_streams
        for role, (before, after) in rss.items():
            print(f"RSS of the {role} over {memory_streams:,} streams of 100 tokens (50 at a "
                  f"time): {before / 1024:.1f} MiB after warm-up, {after / 1024:.1f} MiB after "
                  f"(+{(after - before) / 1024:.1f} MiB)")
            figures[f"{role}_rss_growth_mib"] = (after - before) / 1024
            figures[f"{role}_rss_mib"] = after / 1024
        counted = _metric(proxy.admin, "ragobs_requests_total")
        print(f"the proxy's /metrics counted {counted:.0f} streams; it carried {carried}")
        figures["proxy_streams_counted"] = counted
        if counted != carried:
            raise SystemExit(f"the proxy counted {counted:.0f} streams of {carried}")
        if them is not None:
            print("ragobs proxy / LiteLLM proxy, same upstream, same run (below 1: ragobs "
                  "costs less):")
            for n in SIZES:
                for key, what in (("ttft", "TTFT added"), ("chunk", "per-chunk latency added")):
                    for q in ("p50", "p99"):
                        ours = figures[f"proxy_{key}_added_{q}_ms_{n}"]
                        theirs = figures[f"litellm_{key}_added_{q}_ms_{n}"]
                        print(f"  {n:>5,}-token answers  {what:<23} {q}  ragobs {ours:8.3f} ms"
                              f"  LiteLLM {theirs:8.3f} ms  {_ratio(ours, theirs)}")
                ours, theirs = figures[f"proxy_cpu_ms_{n}"], figures[f"litellm_cpu_ms_{n}"]
                print(f"  {n:>5,}-token answers  CPU per answer              ragobs {ours:8.2f} ms"
                      f"  LiteLLM {theirs:8.2f} ms  {_ratio(ours, theirs)}")
                figures[f"proxy_litellm_cpu_ratio_{n}"] = ours / theirs
            ours, theirs = figures["proxy_rss_mib"], figures["litellm_rss_mib"]
            print(f"  RSS after {memory_streams:,} more streams of 100 tokens: ragobs "
                  f"{ours:.1f} MiB, LiteLLM {theirs:.1f} MiB ({_ratio(ours, theirs)})")
            ours, theirs = figures["proxy_rss_growth_mib"], figures["litellm_rss_growth_mib"]
            print(f"  RSS growth over them: ragobs {ours:+.1f} MiB, LiteLLM {theirs:+.1f} MiB")
    finally:
        for p in (them, proxy, relay, upstream):
            if p is not None:
                _stop(p.proc)
        workdir.cleanup()
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer streams")
    parser.add_argument("--memory-streams", type=int, default=10_000)
    parser.add_argument("--litellm", default=None, metavar="PATH",
                        help=f"the litellm CLI to compare with (default: ${LITELLM_ENV})")
    parser.add_argument("--serve", choices=("upstream", "relay", "proxy"), default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.port, args.upstream))
    else:
        main(args.quick, args.memory_streams, args.litellm)
