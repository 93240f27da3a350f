"""Django's own ``tests/tasks`` (from the source distribution of the Django under test)
against qlite, with Django's test runner, on a fresh SeaweedFS: ``make test-django6``.

    python tests/djangosuite/run.py DJANGO_SOURCE/tests
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def main() -> int:
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "tasks" / "test_tasks.py").exists():
        print("Error: expected the tests folder of a Django source distribution (with "
              "tasks/test_tasks.py). Try: make test-django6", file=sys.stderr)
        return 2
    sys.path[:0] = [sys.argv[1], str(HERE), str(ROOT)]
    from qlite.testing.devserver import SeaweedFS

    with tempfile.TemporaryDirectory() as tmp, SeaweedFS(Path(tmp) / "seaweedfs") as server:
        server.create_bucket("django-suite")
        os.environ.update({**server.env(), "QLITE_URL": "s3://django-suite/tasks",
                           "QLITE_DB": str(Path(tmp) / "index.db"), "QLITE_REPLICATE": "off",
                           "DJANGO_SETTINGS_MODULE": "settings"})
        import django
        from django.test.utils import get_runner

        django.setup()
        from django.conf import settings

        failures = get_runner(settings)(verbosity=2).run_tests(["suite"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
