"""The feeds example: no database (the page keeps its feeds, the bucket keeps the results).
QLITE_URL and the AWS_* variables come from the environment, as for any qlite process."""

import importlib.util
import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "feeds-example-not-a-secret")
DEBUG = os.environ.get("FEEDS_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
DATABASES: dict = {}
ROOT_URLCONF = "feedsite.urls"
WSGI_APPLICATION = "feedsite.wsgi.application"
# django.tasks on Django >= 6.0, else the django-tasks backport (an app of its own).
BACKPORT = importlib.util.find_spec("django.tasks") is None
INSTALLED_APPS = [*(["django_tasks"] if BACKPORT else []), "qlite.django", "feeds"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
TASKS = {
    "default": {
        "BACKEND": "qlite.django.QliteBackend",
        # One attempt: someone is watching the page, so a failure shows at once (and they
        # can add the feed again); qlite's retries are there for jobs nobody waits for.
        "OPTIONS": {"max_attempts": 1},
    },
}
# Seconds the worker waits for a feed's server (connect, then each read).
FEEDS_TIMEOUT = float(os.environ.get("FEEDS_TIMEOUT", "10"))
LOGGING = {"version": 1, "disable_existing_loggers": False}
