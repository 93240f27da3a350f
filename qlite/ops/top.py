"""``qlite top``: :func:`qlite.ops.stats.stats` and the latest failures as a live terminal view
(rich, which typer already depends on)."""

from __future__ import annotations

import time
from typing import Any

from qlite.index.db import Index
from qlite.ops.running import progress_text, running_for
from qlite.ops.stats import STATES, format_seconds, stats

STYLE = {"queued": "yellow", "scheduled": "yellow", "running": "blue", "succeeded": "green",
         "failed": "red", "cancelled": "dim"}


def frame(index: Index, since: float = 3600.0, now: float | None = None) -> Any:
    """One screen: totals, queues, tasks, running jobs with their progress, the latest
    failures and the S3 cost."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.time() if now is None else now
    s = stats(index, since, now)
    fmt = format_seconds
    f = s["finished"]
    rate = s["failure_rate"]
    head = Text.assemble(
        ("qlite top", "bold"), f"  {index.path}  {time.strftime('%H:%M:%S', time.localtime(now))}"
        f"  window {fmt(since)}\n",
        f"{sum(f.values())} finished ({f['succeeded']} succeeded, ",
        (f"{f['failed']} failed", "red" if f["failed"] else ""),
        f", {f['cancelled']} cancelled)  {s['throughput_per_minute']:g}/min  failure rate "
        f"{'-' if rate is None else f'{rate:.1%}'}  wait p50/p95 {fmt(s['wait']['p50'])}/"
        f"{fmt(s['wait']['p95'])}  run p50/p95 {fmt(s['run']['p50'])}/{fmt(s['run']['p95'])}"
        f"  oldest waiting {fmt(s['oldest_waiting_seconds'])}")

    queues = Table(title="queues", title_justify="left", expand=False)
    queues.add_column("queue")
    for state in STATES:
        queues.add_column(state, justify="right", style=STYLE[state])
    queues.add_column("oldest waiting", justify="right")
    for q, c in s["queues"].items():
        queues.add_row(q, *(str(c[state]) for state in STATES), fmt(c["oldest_waiting_seconds"]))
    queues.add_row("all", *(str(s["states"][state]) for state in STATES),
                   fmt(s["oldest_waiting_seconds"]), style="bold")

    tasks = Table(title=f"tasks, last {fmt(since)}", title_justify="left")
    for name, justify in (("task", "left"), ("finished", "right"), ("/min", "right"),
                          ("failed", "right"), ("wait p50", "right"), ("wait p95", "right"),
                          ("run p50", "right"), ("run p95", "right")):
        tasks.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name, t in s["tasks"].items():
        failed = t["finished"]["failed"]
        tasks.add_row(name, str(sum(t["finished"].values())), f"{t['throughput_per_minute']:g}",
                      Text(str(failed), style="red" if failed else ""),
                      fmt(t["wait"]["p50"]), fmt(t["wait"]["p95"]),
                      fmt(t["run"]["p50"]), fmt(t["run"]["p95"]))

    running = Table(title="running", title_justify="left")
    for name in ("job", "task", "running for", "progress"):
        running.add_column(name, overflow="fold" if name == "progress" else "ellipsis")
    for job in index.jobs("running", None, 10):
        running.add_row(job.id, job.task, running_for(job.started_at, now),
                        progress_text(job.progress, at=False))

    failures = Table(title="latest failures", title_justify="left")
    for name in ("job", "task", "finished", "error"):
        failures.add_column(name, overflow="fold" if name == "error" else "ellipsis")
    for job in index.jobs("failed", None, 5):
        error = job.error or {}
        failures.add_row(job.id, job.task, job.finished_at or "-",
                         Text(f"{error.get('type')}: {error.get('message')}", style="red"))

    c = s["s3"]
    cost = (f"S3: {c['requests_per_job']:.2f} requests per job, "
            f"${c['dollars_per_million_jobs']:.2f} per million jobs at AWS list prices "
            f"(${c['dollars_per_million_jobs_with_enqueue']:.2f} with the producers' PUTs)"
            if c["jobs"] else "S3: no jobs published yet")
    parts: list[Any] = [head, queues, tasks]
    if running.row_count:
        parts.append(running)
    if failures.row_count:
        parts.append(failures)
    parts.append(Text(cost, style="dim"))
    return Group(*parts)


def run(index: Index, since: float = 3600.0, once: bool = False, every: float = 1.0) -> None:
    """Print one frame (``once``), or redraw every ``every`` seconds until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if once:
        if not console.is_terminal:
            console = Console(width=max(console.width, 140))  # a pipe: do not wrap at 80
        console.print(frame(index, since))
        return
    try:
        with Live(frame(index, since), console=console, auto_refresh=False,
                  screen=False) as live:
            while True:
                time.sleep(every)
                live.update(frame(index, since), refresh=True)
    except KeyboardInterrupt:
        pass
