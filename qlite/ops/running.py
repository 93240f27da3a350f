"""Running jobs on one line each: how long they have run and their last ``ctx.progress``
(docs/long-jobs.md), for ``qlite ls``, ``qlite status``, ``qlite top`` and the dashboard."""

from __future__ import annotations

import json
import time
from datetime import datetime


def duration(seconds: float) -> str:
    """``42s``, ``12m03s``, ``3h07m``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def running_for(started_at: str | None, now: float | None = None) -> str:
    """How long since ``started_at`` (RFC 3339), as :func:`duration`; ``-`` when unknown."""
    if not started_at:
        return "-"
    started = datetime.fromisoformat(started_at.replace("Z", "+00:00")).timestamp()
    return duration((time.time() if now is None else now) - started)


def progress_text(report: dict | None, at: bool = True) -> str:
    """``1200/5000 (24%) 40/s ETA 1m35s "importing"``: a ctx.progress report on one line."""
    if not report:
        return "-"
    done, total = report.get("done"), report.get("total")
    text = f"{done:g}" + (f"/{total:g}" if total is not None else "")
    if total and done is not None:
        text += f" ({100 * done / total:.0f}%)"
    if report.get("rate") is not None:
        text += f" {report['rate']:g}/s"
    if report.get("eta") is not None:
        text += f" ETA {duration(report['eta'])}"
    if report.get("message"):
        text += f" {json.dumps(report['message'], ensure_ascii=False)}"
    elif report.get("sealed_message"):
        text += " (message encrypted)"
    return text + (f" at {report.get('at')}" if at else "")
