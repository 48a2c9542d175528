"""setup() with process-wide globals; each case runs in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.support import free_port


def run_script(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_readme_quick_start_serves_decorated_streams() -> None:
    port = free_port()
    done = run_script(f"""
        import asyncio, urllib.request
        import ragobs

        @ragobs.instrument_stream(operation="chat", provider="openai", model="gpt-4o")
        async def answer(question):
            async with ragobs.stage("retrieve", source="docs"):
                await asyncio.sleep(0)
            for word in question.split():
                yield word

        async def main():
            return [t async for t in answer("hello streaming world")]

        runtime = ragobs.setup(service_name="readme-agent", port={port})
        assert ragobs.setup() is runtime  # idempotent
        print(asyncio.run(main()))
        body = urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode()
        print("SERIES_OK" if 'gen_ai_request_model="gpt-4o"' in body else body)
        print("SERVICE_OK" if 'service_name="readme-agent"' in body else "no service")
        print("PROCESS_OK" if "process_cpu_seconds_total" in body else "no process metrics")
        runtime.shutdown()
    """)
    assert done.returncode == 0, done.stderr
    assert "['hello', 'streaming', 'world']" in done.stdout
    for marker in ("SERIES_OK", "SERVICE_OK", "PROCESS_OK"):
        assert marker in done.stdout, done.stdout


def test_application_providers_are_kept() -> None:
    done = run_script("""
        import asyncio
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import ragobs

        reader = InMemoryMetricReader()
        mine_m = MeterProvider(metric_readers=[reader])
        exporter = InMemorySpanExporter()
        mine_t = TracerProvider()
        mine_t.add_span_processor(SimpleSpanProcessor(exporter))
        metrics.set_meter_provider(mine_m)
        trace.set_tracer_provider(mine_t)

        runtime = ragobs.setup(serve=False)
        assert metrics.get_meter_provider() is mine_m
        assert trace.get_tracer_provider() is mine_t
        assert runtime.meter_provider is None and runtime.tracer_provider is None

        async def main():
            async for _ in ragobs.observe_stream(iter_async(), model="m"):
                pass

        async def iter_async():
            yield "x"

        asyncio.run(main())
        names = {m.name for rm in reader.get_metrics_data().resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics}
        assert "gen_ai.client.operation.duration" in names, names
        assert [s.name for s in exporter.get_finished_spans()] == ["chat m"]
        print("KEPT_OK")
    """)
    assert done.returncode == 0, done.stderr
    assert "KEPT_OK" in done.stdout


def test_otel_service_name_and_resource_attributes_are_honoured() -> None:
    port = free_port()
    done = run_script(f"""
        import urllib.request
        import ragobs
        runtime = ragobs.setup(port={port})
        list(ragobs.observe_stream(iter(["a"])))
        body = urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode()
        target = [line for line in body.splitlines() if line.startswith("target_info")]
        print(target)
        print(runtime.service_name)
        runtime.shutdown()
    """, OTEL_SERVICE_NAME="env-agent", OTEL_RESOURCE_ATTRIBUTES="deployment.environment=prod")
    assert done.returncode == 0, done.stderr
    assert 'service_name="env-agent"' in done.stdout
    assert 'deployment_environment="prod"' in done.stdout
    assert done.stdout.strip().endswith("env-agent")


def test_serve_runs_a_user_function_with_the_sidecar_up(tmp_path: object) -> None:
    port = free_port()
    module_dir = str(tmp_path)
    with open(os.path.join(module_dir, "my_agent.py"), "w") as f:
        f.write(textwrap.dedent(f"""
            import asyncio, urllib.request
            import ragobs

            async def main():
                async for _ in ragobs.observe_stream(words(), model="served-model"):
                    pass
                loop = asyncio.get_running_loop()
                body = await loop.run_in_executor(None, lambda: urllib.request.urlopen(
                    "http://127.0.0.1:{port}/metrics").read().decode())
                print("SERVED_OK" if 'gen_ai_request_model="served-model"' in body else body)

            async def words():
                yield "w"
        """))
    done = subprocess.run(
        [sys.executable, "-m", "ragobs.cli", "serve", "--port", str(port), "--run",
         "my_agent:main"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": module_dir})
    assert done.returncode == 0, done.stderr
    assert "SERVED_OK" in done.stdout, done.stdout


def test_setup_after_shutdown_serves_the_new_runtimes_metrics() -> None:
    """OpenTelemetry sets each global provider once: a second setup() after
    shutdown() keeps providers of its own, and ragobs's instruments use them."""
    port = free_port()
    done = run_script(f"""
        import asyncio, urllib.request
        from prometheus_client import CollectorRegistry
        import ragobs

        async def tokens():
            for t in "abc":
                yield t

        async def one():
            async for _ in ragobs.observe_stream(tokens(), model="again-model"):
                pass

        first = ragobs.setup(serve=False, registry=CollectorRegistry())
        asyncio.run(one())
        first.shutdown()
        second = ragobs.setup(port={port}, registry=CollectorRegistry())
        assert second is not first
        asyncio.run(one())
        body = urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode()
        ok = 'ragobs_requests_total{{' in body and 'gen_ai_request_model="again-model"' in body
        print("SECOND_OK" if ok else body)
        second.shutdown()
    """)
    assert done.returncode == 0, done.stderr
    assert "SECOND_OK" in done.stdout, done.stdout
    assert "setup() after shutdown()" in done.stderr
