"""The page answers at once: adding a feed is one PutObject (``fetch_feed.enqueue``); the
browser then polls ``/feeds/<id>``, which reads the job's result from the bucket."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from feeds.tasks import fetch_feed
from qlite.django.compat import TaskResultDoesNotExist

validate_url = URLValidator(schemes=["http", "https"])


@require_GET
def index(request):
    return render(request, "feeds/index.html")


@require_POST
def add(request):
    url = request.POST.get("url", "").strip()
    try:
        validate_url(url)
    except ValidationError:
        return JsonResponse({"error": f"not an http(s) URL: {url[:200]!r}"}, status=400)
    result = fetch_feed.enqueue(url)
    return JsonResponse({"id": result.id, "url": url}, status=202)


@require_GET
def job(request, job_id: str):
    try:
        result = fetch_feed.get_result(job_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": f"no feed job {job_id[:40]!r}"}, status=404)
    body = {"id": result.id, "status": result.status.name}
    if result.status.name == "SUCCESSFUL":
        body.update(result.return_value)
    elif result.status.name == "FAILED":
        error = result.errors[-1] if result.errors else None
        # The traceback's last line is "module.Class: message"; the page shows the message.
        lines = error.traceback.strip().splitlines() if error else []
        body["error"] = (lines[-1].removeprefix(f"{error.exception_class_path}: ")
                         if lines else "failed")
    return JsonResponse(body)


SAMPLE = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>qlite sample feed</title>
<item><title>Fetched in the background</title><link>https://example.com/1</link></item>
<item><title>The page answered at once</title><link>https://example.com/2</link></item>
<item><title>Then it polled the job</title><link>https://example.com/3</link></item>
</channel></rss>"""


@require_GET
def sample(request):
    """A feed to try without the internet (``make demo-web`` allows 127.0.0.1 for it)."""
    return HttpResponse(SAMPLE, content_type="application/rss+xml; charset=utf-8")
