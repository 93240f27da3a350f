"""The WSGI application (``runserver``, gunicorn, uWSGI load it once per process)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedsite.settings")
application = get_wsgi_application()

# Build the qlite backend's S3 client now: importing boto3 and loading its models take some
# 0.5 s, which the first request would otherwise pay.
from feeds.tasks import fetch_feed  # noqa: E402

fetch_feed.get_backend().connect()
