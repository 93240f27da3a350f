"""Example tasks for `make run` and the README quickstart: `qlite worker --app tasks:app`."""

import time

import qlite

app = qlite.App()


@app.task(name="math.add")
def add(a, b):
    return a + b


@app.task(name="demo.flaky", max_attempts=3)
def flaky(ctx, fail_times=1):
    """Fails its first `fail_times` attempts, then succeeds: shows retries with back-off."""
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"simulated failure on attempt {ctx.attempt}")
    return {"succeeded_on_attempt": ctx.attempt}


@app.task(name="demo.slow")
def slow(seconds=1.0):
    """Stands in for a slow third-party API call."""
    time.sleep(seconds)
    return {"slept": seconds}


@app.task(name="demo.fail", max_attempts=2)
def fail(message="this task always fails"):
    raise ValueError(message)
