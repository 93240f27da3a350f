"""Tasks that log, for tests/test_logs.py (``--app logapp:app``)."""

import logging
import os
import time

import qlite

app = qlite.App()
log = logging.getLogger("logapp")


def _chatter(ctx, tag: str, lines: int, fail_first: bool, leak: bool) -> dict:
    for i in range(lines):
        log.debug("%s debug %d", tag, i)
        log.info("%s info %d", tag, i)
        time.sleep(0.01)  # let the other jobs' threads log in between
        logging.getLogger("some.library").warning("%s warning %d", tag, i)
        ctx.logger.info("%s via ctx %d", tag, i)
    try:
        raise KeyError(tag)
    except KeyError:
        log.exception("%s error with a traceback", tag)
    if leak:
        log.info("%s connecting with secret %s", tag, os.environ["AWS_SECRET_ACCESS_KEY"])
    if fail_first and ctx.attempt == 1:
        raise RuntimeError(f"{tag} fails its first attempt")
    return {"tag": tag, "attempt": ctx.attempt}


@app.task(name="log.chatty", backoff=0.05)
def chatty(ctx, tag, lines=3, fail_first=False, leak=False):
    return _chatter(ctx, tag, lines, fail_first, leak)


@app.task(name="log.chatty_child", backoff=0.05, timeout=60)
def chatty_child(ctx, tag, lines=3, fail_first=False, leak=False):
    """The same in a child process (a task with a timeout runs in one)."""
    return _chatter(ctx, tag, lines, fail_first, leak)


@app.task(name="log.flood")
def flood(n):
    for i in range(n):
        log.info("line %d %s", i, "x" * 100)
    return n
