"""``python manage.py qlite_worker``: ``qlite worker`` for a Django project. It runs the
django.tasks Tasks of the installed apps (qlite.django.worker) and takes qlite worker's
options, from the same settings table."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

# The settings `qlite worker` takes as options, in its order.
OPTIONS = ("queues", "concurrency", "replicate", "pool", "url", "endpoint_url", "db",
           "max_attempts", "lease", "grace", "shards", "node", "fleet_lease", "poll_min",
           "poll_max", "max_payload", "log_level", "log_format", "metrics_port",
           "metrics_host", "signing_key")
TYPES = {"int": int, "float": float}


class Command(BaseCommand):
    help = ("Run the project's django.tasks Tasks on qlite until SIGTERM or SIGINT. "
            "Example: python manage.py qlite_worker --queue emails --queue default "
            "--concurrency 8")

    def add_arguments(self, parser: Any) -> None:
        from qlite.settings import setting

        parser.add_argument("--burst", action="store_true",
                            help="exit 0 once no job is runnable now")
        for name in OPTIONS:
            s = setting(name)
            kwargs: dict = {"dest": name, "default": None,
                            "help": s.cli_help(s.help.split(". ")[0].rstrip("."))}
            if s.kind == "list":
                kwargs["action"] = "append"
            else:
                kwargs["type"] = TYPES.get(s.kind, str)
            parser.add_argument(s.option, **kwargs)

    def handle(self, *args: Any, **options: Any) -> None:
        from qlite.app import load_app
        from qlite.django.backend import QliteBackend
        from qlite.django.compat import task_backends
        from qlite.errors import QliteError
        from qlite.settings import Settings

        values = {name: options[name] for name in OPTIONS}
        backends = [task_backends[a] for a in task_backends.settings]
        ours = [b for b in backends if isinstance(b, QliteBackend)]
        if not ours:
            raise CommandError("TASKS has no qlite.django.QliteBackend. Try: TASKS = "
                               "{'default': {'BACKEND': 'qlite.django.QliteBackend'}}")
        # Defaults from the first qlite backend's settings: the queue the web process writes to.
        first = ours[0]
        values["url"] = values["url"] or first.options.get("url")
        values["endpoint_url"] = values["endpoint_url"] or first.options.get("endpoint_url")
        if values["queues"] is None:
            values["queues"] = sorted({q for b in ours for q in b.queues})
        try:
            settings = Settings.load(**values)
            settings.require_url()
            from qlite.worker.logs import setup

            setup(settings.log_level, settings.log_format)
            from qlite.worker.loop import Worker

            worker = Worker(load_app("qlite.django.worker:app"), settings)
            worker.install_signals()
            code = worker.run(burst=options["burst"])
        except QliteError as e:
            raise CommandError(str(e)) from None
        if code:
            raise SystemExit(code)
