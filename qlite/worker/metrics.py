"""Prometheus metrics of the worker (``--metrics-port``), with prometheus-client.

Imported only when a metrics port is set, so neither the producer nor a worker without metrics
loads prometheus-client. Counters and the run-time histogram are updated by the worker's loop
as it records outcomes; queue depth and S3 requests are read when Prometheus scrapes (a
read-only connection to the index per scrape: the loop's connection stays on its thread).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from qlite.errors import ConfigError

log = logging.getLogger(__name__)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
WAITING = ("queued", "scheduled", "running")


class _Scraped:
    """Values read at scrape time: queue depth from the index, S3 requests from the Store."""

    def __init__(self, worker: Any):
        self.worker = worker

    def collect(self) -> Any:
        from qlite.index.db import Index

        depth = GaugeMetricFamily("qlite_queue_depth", "Jobs in the worker's index waiting "
                                  "or running, by queue and state.", labels=["queue", "state"])
        index = self.worker.index
        if index is not None:
            try:
                reader = Index(index.path, readonly=True)
                try:
                    counts = reader.depth()
                finally:
                    reader.close()
            except Exception as e:  # a busy or missing index: report what can be reported
                log.warning("metrics: reading queue depth failed: %s: %s", type(e).__name__, e)
                counts = []
            seen = {(r["queue"], r["state"]): r["n"] for r in counts}
            for queue in self.worker.settings.queues:
                for state in WAITING:
                    seen.setdefault((queue, state), 0)
            for (queue, state), n in sorted(seen.items()):
                depth.add_metric([queue, state], n)
        yield depth
        requests = CounterMetricFamily("qlite_s3_requests", "S3 requests the worker made, by "
                                       "operation (list, get, put, delete, head, copy, ...).",
                                       labels=["operation"])
        for op, n in sorted(_snapshot(self.worker.store.requests).items()):
            requests.add_metric([op], n)
        yield requests


def _snapshot(counter: Any) -> dict:
    """A copy of a Counter another thread may be adding keys to."""
    for _ in range(5):
        try:
            return dict(counter)
        except RuntimeError:  # "dictionary changed size during iteration"
            time.sleep(0.001)
    return {}


class Metrics:
    def __init__(self, worker: Any):
        self.registry = CollectorRegistry()
        self.finished = Counter(
            "qlite_jobs_finished", "Jobs this worker brought to a terminal state, by task and "
            "state (succeeded, failed, cancelled).", ["task", "state"], registry=self.registry)
        self.attempts = Counter(
            "qlite_job_attempts", "Attempts this worker ran, by task and outcome (succeeded, "
            "retry, failed, cancelled, snoozed).", ["task", "outcome"], registry=self.registry)
        self.duration = Histogram(
            "qlite_job_duration_seconds", "Run time of an attempt, from its start to the "
            "worker collecting its outcome, by task.", ["task"], buckets=BUCKETS,
            registry=self.registry)
        self.errors = Counter(
            "qlite_loop_errors", "Failed steps of the worker's loop, by part (ingest, claim, "
            "publish, collect, maintain, schedule, check_cancels).", ["part"],
            registry=self.registry)
        self.registry.register(_Scraped(worker))
        self.started: dict[str, float] = {}
        self.server: Any = None

    def serve(self, host: str, port: int) -> None:
        try:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port}: "
                              f"{e.strerror or e}. Try: another port, or stop what uses it"
                              ) from None
        log.info("metrics at http://%s:%d/metrics", host, port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- hooks the worker calls ------------------------------------------------------------

    def job_started(self, job_id: str) -> None:
        self.started[job_id] = time.monotonic()

    def job_recorded(self, task: str, job_id: str, outcome: str) -> None:
        """``outcome``: succeeded, retry, failed, cancelled or snoozed."""
        began = self.started.pop(job_id, None)
        if began is not None:
            self.duration.labels(task).observe(time.monotonic() - began)
        self.attempts.labels(task, outcome).inc()
        if outcome in ("succeeded", "failed", "cancelled"):
            self.finished.labels(task, outcome).inc()

    def job_expired(self, task: str) -> None:
        self.finished.labels(task, "cancelled").inc()

    def step_failed(self, part: Any) -> None:
        name = getattr(part, "__name__", "")
        self.errors.labels("ingest" if name == "<lambda>" else name.strip("_") or "?").inc()


def start(worker: Any) -> Metrics:
    metrics = Metrics(worker)
    metrics.serve(worker.settings.metrics_host, worker.settings.metrics_port)
    return metrics
