"""The tasks a Django project may run: ``Task`` objects defined in its installed apps' modules.

The worker registers exactly these, by their module path, in a qlite App; a job naming any
other path fails with UnknownTask. Nothing is ever imported from a job: each installed app's
``tasks`` module is imported (as Django's admin does with ``admin``), then the modules of
installed apps already loaded are searched for Task objects.
"""

from __future__ import annotations

import sys
from typing import Any


def discover() -> dict[str, Any]:
    """``{module_path: Task}`` for every Task defined in an installed app's modules."""
    from django.apps import apps
    from django.utils.module_loading import autodiscover_modules

    from qlite.django.compat import Task

    autodiscover_modules("tasks")
    roots = tuple(c.name for c in apps.get_app_configs())
    found: dict[str, Any] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not _within(name, roots):
            continue
        for value in list(vars(module).values()):
            # Defined in an installed app, not merely imported into one of its modules.
            if isinstance(value, Task) and _within(value.func.__module__, roots):
                found.setdefault(value.module_path, value)
    return found


def _within(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)
