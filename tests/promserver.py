"""A real ``prometheus`` server on loopback, for tests that need PromQL answers.

:class:`PrometheusServer` writes a config (scrape targets, optional rule
files) into a directory of its own, starts the binary bound to 127.0.0.1 on a
free port, waits for ``/-/ready`` and stops the process on :meth:`stop` or at
the end of a ``with`` block, whatever happened. Its HTTP helpers are
synchronous (urllib): from a test whose event loop also serves the scraped
app, call them through ``asyncio.to_thread`` so the loop keeps answering
scrapes.

Example::

    with PrometheusServer(tmp_path, ["127.0.0.1:9464"]) as prom:
        prom.wait_for(lambda: prom.value("sum(up)") == 1.0)
        rows = prom.query('ragobs_requests_total{ragobs_outcome="ok"}')
"""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from tests.procserver import ServerProcess
from tests.support import free_port, require_binary

#: Bound on any single HTTP request to the server.
HTTP_TIMEOUT = 10.0


class PrometheusError(RuntimeError):
    """The server did not start, or its API answered with an error."""


class PrometheusServer(ServerProcess):
    """One ``prometheus`` process with a generated configuration.

    Args:
        workdir: a directory owned by the caller (``tmp_path``); the config,
            copied rule files, TSDB and log go under ``workdir/prometheus``.
        targets: ``host:port`` addresses scraped at ``/metrics`` (job ``job``).
        rule_files: recording/alerting rule files, copied next to the config.
        scrape_interval, evaluation_interval: Prometheus durations ("1s").
        job: the ``job`` label of the targets.
        metrics_path: path scraped on every target.
        extra_args: more command-line flags for the binary.
    """

    error = PrometheusError
    label = "prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str] = (),
        *,
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        job: str = "ragobs",
        metrics_path: str = "/metrics",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.dir = Path(workdir) / "prometheus"
        self.targets = list(targets)
        self.rule_files = [Path(p) for p in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.job = job
        self.metrics_path = metrics_path
        self.extra_args = list(extra_args)
        self.port = 0
        super().__init__(self.dir / "prometheus.log")

    # -- lifecycle -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        """The prometheus.yml written at start (JSON is valid YAML)."""
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                # A scrape may not last longer than the interval.
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [p.name for p in self.rule_files],
            "scrape_configs": [],
        }
        if self.targets:
            config["scrape_configs"].append({
                "job_name": self.job,
                "metrics_path": self.metrics_path,
                "static_configs": [{"targets": self.targets}],
            })
        return json.dumps(config, indent=2)

    def start(self, ready_timeout: float = 30.0) -> Self:
        """Start the binary and wait until it reports ready; fails with its log."""
        binary = require_binary("prometheus")
        self.dir.mkdir(parents=True, exist_ok=True)
        for rule_file in self.rule_files:
            shutil.copy(rule_file, self.dir / rule_file.name)
        config = self.dir / "prometheus.yml"
        config.write_text(self.config_text(), encoding="utf-8")
        self.port = free_port()
        self._spawn(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                *self.extra_args,
            ],
            cwd=self.dir, ready=self._ready, timeout=ready_timeout, poll=0.1, log_mode="wb",
        )
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # -- HTTP API ----------------------------------------------------------------

    def api(self, path: str, **params: str | float | list[str]) -> Any:
        """GET ``/api/v1/{path}``; returns ``data``, raises on an API error."""
        query = urllib.parse.urlencode(
            [(k, v) for k, vs in params.items()
             for v in (vs if isinstance(vs, list) else [vs])]
        )
        url = f"{self.url}/api/v1/{path}?{query}"
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result vector (scalars become one unlabelled row)."""
        params: dict[str, str | float | list[str]] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of ``expr`` (None when empty); fails on several rows."""
        rows = self.query(expr, at)
        if not rows:
            return None
        if len(rows) > 1:
            raise PrometheusError(f"{expr!r} returned {len(rows)} series, expected one")
        return float(rows[0]["value"][1])

    def label_values(self, label: str, match: Sequence[str] = ()) -> list[str]:
        """``/api/v1/label/<label>/values``, optionally restricted by selectors."""
        params: dict[str, str | float | list[str]] = {}
        if match:
            params["match[]"] = list(match)
        values: list[str] = self.api(f"label/{urllib.parse.quote(label)}/values", **params)
        return values

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups (``/api/v1/rules``)."""
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (``/api/v1/alerts``)."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def targets_health(self) -> list[str]:
        """``health`` of each active target ("up", "down", "unknown")."""
        return [t["health"] for t in self.api("targets")["activeTargets"]]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 20.0,
                 interval: float = 0.2, what: str = "condition") -> None:
        """Poll ``condition`` until true; fail after ``timeout`` with the log tail."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except PrometheusError:
                pass  # e.g. the first scrape has not produced the metric yet
            if time.monotonic() >= deadline:
                raise PrometheusError(f"{what} not met after {timeout}s:\n{self.log_tail()}")
            time.sleep(interval)


def finite(rows: list[dict[str, Any]]) -> list[float]:
    """The finite values of a query result (NaN/Inf dropped)."""
    values = [float(r["value"][1]) for r in rows]
    return [v for v in values if math.isfinite(v)]
