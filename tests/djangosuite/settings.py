"""Settings for Django's own tests/tasks run against qlite (run.py): its test app ``tasks``
installed, TASKS on qlite; QLITE_URL and AWS_* come from run.py."""

SECRET_KEY = "tests-only"
USE_TZ = True
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
INSTALLED_APPS = ["qlite.django", "tasks"]
TASKS = {"default": {"BACKEND": "draining.DrainingQliteBackend",
                     "QUEUES": ["default", "queue_1"], "OPTIONS": {"max_attempts": 1}}}
