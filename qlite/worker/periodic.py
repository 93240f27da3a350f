"""Periodic tasks: enqueue each due tick as one job whose key is derived from (schedule,
tick), so a tick enqueued twice is still one job (qlite/schedule.py has the definitions)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from qlite import envelope
from qlite.app import App
from qlite.index.db import Index
from qlite.producer import Client
from qlite.schedule import tick_key

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, app: App, index: Index, client: Client, clock: Callable[[], float]):
        self.app = app
        self.index = index
        self.client = client
        self.clock = clock
        self.next_fire: dict[str, float] = {}  # schedule name -> its next tick

    def next_at(self) -> float | None:
        return min(self.next_fire.values()) if self.app.schedules and self.next_fire else None

    def fire(self, owns: Callable[[str], bool] = lambda name: True) -> list[str]:
        """Enqueue the due ticks of the schedules this worker ``owns`` (in a fleet, the owner
        of the schedule's shard); returns the queues that got a job."""
        now = self.clock()
        queues = []
        for s in self.app.schedules.values():
            if not owns(s.name):
                self.next_fire.pop(s.name, None)  # look again once its shard is ours
                continue
            if self.next_fire.get(s.name, 0.0) > now:
                continue
            first = s.name not in self.next_fire  # started, or took the schedule over
            last = self.index.schedule_last(s.name, now)
            ticks, new_last = s.due(last, now)
            task = self.app.tasks[s.task]
            for tick in ticks:
                at = envelope.now_rfc3339(tick)
                key = tick_key(s.name, tick)
                if first and self.client.store.exists(
                        envelope.result_key(envelope.key_id(key))):
                    # Another worker of the fleet ran this tick before we took it over.
                    self.index.schedule_fired(s.name, tick, now)
                    continue
                job = self.client.put(s.task, s.args, s.kwargs, queue=s.queue,
                                      key=key, priority=task.priority,
                                      meta={"schedule": s.name, "tick": at})
                self.index.schedule_fired(s.name, tick, now)
                queues.append(s.queue)
                log.info("periodic job enqueued schedule=%s tick=%s job_id=%s", s.name, at,
                         job.id)
            if new_last > last and not ticks:
                self.index.schedule_fired(s.name, new_last, now)
                log.info("periodic ticks missed while no worker ran were skipped schedule=%s "
                         "misfire=%s", s.name, s.misfire)
            self.next_fire[s.name] = s.next_after(max(last, new_last))
        return queues
