"""The qlite app the benchmark's workers run: a no-op task and an I/O-bound one."""

import time

import qlite

app = qlite.App()


@app.task(name="bench.noop")
def noop(*args, **kwargs):
    return None


@app.task(name="bench.sleep")
def sleep(seconds):
    """I/O-bound work (the fleet case): waits without using the CPU."""
    time.sleep(seconds)


@app.task(name="bench.stamp")
def stamp():
    """When the job started (Unix seconds): pickup latency, from the put to the handler."""
    return time.time()
