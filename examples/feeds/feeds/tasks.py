"""The slow part, run by ``manage.py qlite_worker``: fetch a feed with qlite's ``http.request``
(SSRF guard, time and size limits, redirects checked hop by hop) and keep its items."""

from __future__ import annotations

from types import SimpleNamespace
from xml.etree import ElementTree

from django.conf import settings

if settings.BACKPORT:
    from django_tasks import task
else:
    from django.tasks import task

MAX_BYTES = 512 * 1024  # a feed larger than this is refused, not cut
MAX_ITEMS = 20
ATOM = "{http://www.w3.org/2005/Atom}"


class FeedError(Exception):
    """The URL answered, but not with a feed this example can read."""


@task(takes_context=True)
def fetch_feed(context, url: str) -> dict:
    """``{"title", "url", "items": [{"title", "link"}]}`` of the RSS or Atom feed at ``url``."""
    from qlite.tasks.http import request

    # http.request sends the job id as Idempotency-Key; it needs nothing else of the job.
    job = SimpleNamespace(job_id=context.task_result.id)
    reply = request(job, url, timeout=settings.FEEDS_TIMEOUT, max_body=MAX_BYTES,
                    headers={"Accept": "application/rss+xml, application/atom+xml, "
                                       "application/xml;q=0.9, */*;q=0.1"})
    if reply["truncated"]:
        raise FeedError(f"{reply['url']}: larger than {MAX_BYTES // 1024} KiB")
    if reply["encoding"] != "text":
        raise FeedError(f"{reply['url']}: not text ({reply['headers'].get('Content-Type')})")
    return {"url": reply["url"], **parse(reply["body"])}


def parse(text: str) -> dict:
    """Title and items of an RSS 2.0 or Atom document."""
    if "<!ENTITY" in text:  # nothing a feed needs; the way to an entity-expansion bomb
        raise FeedError("entity declarations are refused")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as e:
        raise FeedError(f"not XML: {e}") from None
    if root.tag == "rss" and root.find("channel") is not None:
        channel = root.find("channel")
        items = [{"title": _text(i, "title"), "link": _text(i, "link")}
                 for i in channel.findall("item")]
        title = _text(channel, "title")
    elif root.tag == f"{ATOM}feed":
        items = [{"title": _text(e, f"{ATOM}title"), "link": _href(e.find(f"{ATOM}link"))}
                 for e in root.findall(f"{ATOM}entry")]
        title = _text(root, f"{ATOM}title")
    else:
        raise FeedError(f"not an RSS or Atom feed (the document is <{root.tag}>)")
    return {"title": title, "items": items[:MAX_ITEMS]}


def _text(node, tag: str) -> str:
    return (node.findtext(tag) or "").strip()[:300]


def _href(link) -> str:
    return "" if link is None else link.get("href", "")[:300]
