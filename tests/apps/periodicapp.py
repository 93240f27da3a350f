"""A periodic task for the two-process exactly-once test (``--app periodicapp:app``): every
run appends its tick to the file named by QLITE_TEST_LEDGER."""

import os

import qlite

app = qlite.App()


@app.periodic(every=1, name="p.every_second")
def every_second(ctx):
    with open(os.environ["QLITE_TEST_LEDGER"], "a") as f:
        f.write(f"{ctx.meta['tick']} {os.getpid()}\n")
    return ctx.meta["tick"]
