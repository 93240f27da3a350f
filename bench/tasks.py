"""The qlite app the benchmark's workers run: one no-op task."""

import qlite

app = qlite.App()


@app.task(name="bench.noop")
def noop(*args, **kwargs):
    return None
