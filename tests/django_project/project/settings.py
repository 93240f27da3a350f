"""A minimal project on the qlite backend; QLITE_URL and AWS_* come from the environment."""

import importlib.util

SECRET_KEY = "tests-only"
USE_TZ = True
DATABASES = {}
# django.tasks on Django >= 6.0, else the django-tasks backport (an app of its own).
BACKPORT = importlib.util.find_spec("django.tasks") is None
INSTALLED_APPS = [*(["django_tasks"] if BACKPORT else []), "qlite.django", "shop"]
TASKS = {
    "default": {
        "BACKEND": "qlite.django.QliteBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"max_attempts": 2},
    },
}
LOGGING = {"version": 1, "disable_existing_loggers": False}
