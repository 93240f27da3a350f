"""QliteBackend with a worker draining in between (tests/djangosuite/suite.py): after each
enqueue, a burst of a real qlite Worker in this process, then ``refresh()``."""

from __future__ import annotations

from qlite.django.backend import QliteBackend

QUEUES = ["default", "queue_1"]
_app = None


def drain() -> None:
    """Run every job that is runnable now, as ``manage.py qlite_worker --burst`` does."""
    global _app
    from qlite.django.worker import build_app
    from qlite.settings import Settings
    from qlite.worker.loop import Worker

    if _app is None:
        _app = build_app()
    Worker(_app, Settings.load(queues=QUEUES)).run(burst=True)


class DrainingQliteBackend(QliteBackend):
    def enqueue(self, task, args, kwargs):
        result = super().enqueue(task, args, kwargs)
        drain()
        result.refresh()
        return result
