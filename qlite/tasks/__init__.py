"""Built-in tasks, registered on every worker's app unless it says ``App(builtins=False)``:

- ``http.request``: call a slow third-party API (``qlite.tasks.http``);
- ``email.send``: mail over SMTP (``qlite.tasks.smtp``);
- ``upload.from_url``, ``upload.copy``: files into and within the bucket
  (``qlite.tasks.upload``);
- ``webhook.deliver``: the signed POST behind ``put(webhook=URL)``.

A producer enqueues them by name without writing any worker code:
``qlite put http.request '{"url": "https://api.example.com/hook", "method": "POST"}'``.
A worker with no tasks of its own runs ``qlite worker --app qlite.tasks:app``.
"""

from __future__ import annotations

from typing import Any

from qlite.app import App

BUILTINS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name: (module, function, task options)
    "http.request": ("http", "request", {"max_attempts": 5, "backoff": 2.0}),
    "email.send": ("smtp", "send", {"max_attempts": 5, "backoff": 5.0}),
    "webhook.deliver": ("http", "deliver_webhook", {"max_attempts": 8, "backoff": 5.0}),
    "upload.from_url": ("upload", "from_url", {"max_attempts": 5, "backoff": 5.0}),
    "upload.copy": ("upload", "copy", {"max_attempts": 5, "backoff": 5.0}),
}


def register(app: App) -> None:
    """Add the built-in tasks to ``app`` (a task the app registered under the same name
    wins)."""
    import importlib

    for name, (module, function, options) in BUILTINS.items():
        if name not in app.tasks:
            fn = getattr(importlib.import_module(f"{__name__}.{module}"), function)
            app.task(fn, name=name, **options)


app = App(builtins=True)
