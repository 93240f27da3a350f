"""Prometheus metrics of a real worker process, scraped over HTTP after jobs ran."""

import re
import signal
import urllib.request

from test_imports import third_party_modules

from conftest import eventually, qlite, start_worker
from qlite import Client
from qlite.testing.devserver import free_port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; 0 when absent."""
    for line in text.splitlines():
        m = re.match(rf"{name}{{(.*)}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


def test_a_worker_serves_job_queue_and_s3_metrics(s3, tmp_path):
    client = Client()
    ok = [client.put("math.add", [i, i]) for i in range(5)]
    bad = client.put("test.always_fail")  # 2 attempts, then failed
    port = free_port()
    worker = start_worker("--app", "testapp:app", "--metrics-port", str(port), env=s3.env,
                          log=tmp_path / "worker.log")
    try:
        for job in [*ok, bad]:
            job.wait(timeout=60)
        def counted() -> str | None:  # the loop records, then publishes: wait for the counter
            text = scrape(port)
            failed = value(text, "qlite_jobs_finished_total", task="test.always_fail",
                           state="failed")
            return text if failed == 1 else None

        text = eventually(counted, what="the failed job in the metrics")
        assert value(text, "qlite_jobs_finished_total", task="math.add", state="succeeded") == 5
        assert value(text, "qlite_job_attempts_total", task="test.always_fail",
                     outcome="retry") == 1
        assert value(text, "qlite_job_duration_seconds_count", task="math.add") == 5
        assert value(text, "qlite_job_duration_seconds_bucket", task="math.add",
                     le="+Inf") == 5
        assert value(text, "qlite_queue_depth", queue="default", state="queued") == 0
        assert 'qlite_queue_depth{queue="default",state="running"}' in text
        assert value(text, "qlite_s3_requests_total", operation="list") >= 1
        assert value(text, "qlite_s3_requests_total", operation="put") >= 6  # results/
        assert "qlite_loop_errors_total" in text

        # Jobs waiting show in the depth gauge.
        later = client.put("math.add", [1, 1], delay=3600)
        eventually(lambda: value(scrape(port), "qlite_queue_depth", queue="default",
                                 state="scheduled") == 1, what="the scheduled job's depth")
        assert later.status()["state"] == "pending"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]


def test_the_metrics_server_binds_loopback_by_default(s3, tmp_path):
    port = free_port()
    worker = start_worker("--app", "testapp:app", "--metrics-port", str(port), env=s3.env,
                          log=tmp_path / "worker.log")
    try:
        def said() -> bool:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            return f"metrics at http://127.0.0.1:{port}/metrics" in (
                tmp_path / "worker.log").read_text()

        eventually(said, what="the metrics address in the log")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def test_a_busy_metrics_port_is_a_one_line_error(s3):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = qlite("worker", "--app", "testapp:app", "--burst", env={
            **s3.env, "QLITE_METRICS_PORT": str(port)})
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert errors and f"--metrics-port {port}: cannot listen" in errors[0], out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_metrics_port_names_the_setting():
    out = qlite("worker", "--app", "testapp:app", "--url", "s3://qlite-tests/x",
                env={"PATH": "/usr/bin:/bin", "QLITE_METRICS_PORT": "99999"})
    assert out.returncode == 1
    assert out.stderr.startswith("Error: QLITE_METRICS_PORT: expected a port number 1..65535")


def test_prometheus_client_is_loaded_only_when_a_metrics_port_is_set():
    loaded = third_party_modules("import qlite.worker.loop, qlite.cli.main, qlite.worker.logs")
    assert "prometheus_client" not in loaded
