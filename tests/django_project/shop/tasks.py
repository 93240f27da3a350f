import asyncio
import os
import time
from pathlib import Path

from django.conf import settings

if settings.BACKPORT:
    from django_tasks import task
else:
    from django.tasks import task


@task
def add(a, b):
    return a + b


@task(queue_name="emails", priority=10)
def send_mail(to, subject="hi"):
    return {"to": to, "subject": subject}


@task
async def async_double(n):
    await asyncio.sleep(0)
    return n * 2


@task
def boom(message):
    raise ValueError(message)


@task(takes_context=True)
def flaky(context, marker):
    """Fails its first attempt, then returns the attempt number and the job's id."""
    if context.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": context.attempt, "id": context.task_result.id}


@task
def slow(marker, seconds):
    """Writes ``marker`` once started (so a test can wait for it), then sleeps; when the marker
    is there already (a run after a crash) it returns at once."""
    if Path(marker).exists():
        return "done again"
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "done"


@task(takes_context=True)
def wait_for(context, path):
    """Runs until ``path`` exists (a test creates it once it has seen the task RUNNING), then
    returns the worker ids the task was given."""
    while not Path(path).exists():
        time.sleep(0.02)
    return {"worker_ids": context.task_result.worker_ids}


@task
def later(message):
    """Fails its attempt and asks qlite for the next one in an hour: the job waits, retrying."""
    from qlite.errors import Retry

    raise Retry(message, after=3600)
