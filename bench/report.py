"""Medians, targets, the printed table, results.json and the chart."""

from __future__ import annotations

from pathlib import Path

from .stats import median

# AWS S3 Standard list prices, dollars per request.
PRICE = {"put": 0.005e-3, "list": 0.005e-3, "copy": 0.005e-3, "delete": 0.005e-3,
         "create": 0.005e-3, "get": 0.0004e-3, "head": 0.0004e-3}
PEER_NAMES = {"huey": "Huey", "rq": "RQ", "celery": "Celery"}


def per_job(worker: dict, producer_puts: float = 1.0) -> dict:
    """S3 requests per job by operation: the producer's PUT plus the worker's requests."""
    ops = dict(worker)
    ops["put"] = ops.get("put", 0.0) + producer_puts
    return ops


def dollars_per_million(ops: dict) -> float:
    return sum(PRICE.get(op, 0.005e-3) * n for op, n in ops.items()) * 1e6


def flat(rnd: dict) -> dict:
    """One round's figures, including the ratios measured within that round."""
    lat, cold = rnd["latency"], rnd["cold"]
    f = {
        "ceiling_rps": rnd["ceiling"],
        "enqueue_p50_ms": lat["qlite_p50"], "enqueue_p99_ms": lat["qlite_p99"],
        "raw_p50_ms": lat["raw_p50"], "raw_p99_ms": lat["raw_p99"],
        "enqueue_p50_ratio": lat["qlite_p50"] / lat["raw_p50"],
        "enqueue_p99_ratio": lat["qlite_p99"] / lat["raw_p99"],
        "enqueue_jobs_s": lat["qlite_jobs_s"],
        # Older results have no encrypted put: NaN fails its target rather than passing it.
        "encrypted_p50_ratio": lat.get("encrypted_p50", float("nan")) / lat["qlite_p50"],
        "cold_qlite_ms": cold["qlite_ms"], "cold_boto3_ms": cold["boto3_ms"],
        "cold_ratio": cold["qlite_ms"] / cold["boto3_ms"],
        "put_many_jobs_s": rnd["bulk"]["jobs_s"],
        "steady_rate": rnd["steady"]["rate"], "steady_p50_ms": rnd["steady"]["p50_ms"],
        "steady_p99_ms": rnd["steady"]["p99_ms"],
        "steady_visible_fraction": rnd["steady"]["visible"] / rnd["steady"]["jobs"],
    }
    for c in (1, 4, "single"):
        d = rnd[f"drain_c{c}"] if c != "single" else rnd["drain_single"]
        c = c if c != "single" else "single"
        # The producer's own requests per job: put_many's packs, or one PUT per job.
        ops = per_job(d["worker_requests"], sum(d.get("producer_requests", {"put": 1}).values()))
        worker_total = sum(d["worker_requests"].values())
        f[f"drain_c{c}_jobs_s"] = d["jobs_s"]
        f[f"drain_c{c}_rss_mb"] = d["peak_rss_mb"]
        f[f"requests_c{c}"] = sum(ops.values())
        f[f"dollars_c{c}"] = dollars_per_million(ops)
        f[f"drain_c{c}_bound"] = rnd["ceiling"] / worker_total
        f[f"drain_c{c}_of_bound"] = d["jobs_s"] / f[f"drain_c{c}_bound"]
        for op, n in ops.items():
            f[f"requests_c{c}_{op}"] = n
        for peer in PEER_NAMES:
            f[f"drain_c{c}_vs_{peer}"] = d["jobs_s"] / rnd[peer]["drain_jobs_s"]
    # Single puts are the c=4 row of older runs: keep those names for the targets.
    for k in [k for k in f if k.startswith(("requests_csingle", "dollars_csingle"))]:
        f[k.replace("csingle", "single")] = f.pop(k)
    steady_ops = rnd["steady"]["requests"]
    f["requests_steady"] = sum(steady_ops.values())
    f["dollars_steady"] = dollars_per_million(steady_ops)
    for op, n in steady_ops.items():
        f[f"requests_steady_{op}"] = n
    for peer in PEER_NAMES:
        f[f"{peer}_enqueue_jobs_s"] = rnd[peer]["enqueue_jobs_s"]
        f[f"{peer}_drain_jobs_s"] = rnd[peer]["drain_jobs_s"]
        f[f"enqueue_vs_{peer}"] = lat["qlite_jobs_s"] / rnd[peer]["enqueue_jobs_s"]
    return f


def build(sizes: dict, machine: dict, rounds: list[dict], mem_inbox: dict, mem_index: dict,
          idle: dict, deployed: dict | None = None) -> dict:
    flats = [flat(r) for r in rounds]
    keys = sorted({k for f in flats for k in f})
    med = {k: median([f.get(k, 0.0) for f in flats]) for k in keys}
    med.update({
        "rss_inbox_mb": mem_inbox["peak_rss_mb"], "rss_index_mb": mem_index["peak_rss_mb"],
        "idle_lists_per_hour": idle["steady_lists_per_hour"],
        "idle_dollars_per_month": idle["steady_lists_per_hour"] * 24 * 30 * PRICE["list"],
    })
    if deployed is not None:  # bench/idle.py: worker + Litestream, counted by a proxy
        med.update({"idle_deployed_dollars_month": deployed["dollars_month"],
                    "pickup_idle_p50_ms": deployed["pickup_p50_ms"],
                    "pickup_idle_p95_ms": deployed["pickup_p95_ms"]})
    results = {"machine": machine, "sizes": sizes, "medians": med, "rounds": flats,
               "raw_rounds": rounds, "memory": {"inbox": mem_inbox, "index": mem_index},
               "idle": idle, "idle_deployed": deployed}
    results["targets"] = targets(med, sizes)
    return results


def targets(m: dict, sizes: dict) -> list[dict]:
    def t(name, figure, ok):
        return {"target": name, "figure": figure, "met": bool(ok)}

    return [
        t("enqueue p50 <= 1.10x raw put_object + 0.1 ms",
          f"{m['enqueue_p50_ms']:.2f} ms vs {1.1 * m['raw_p50_ms'] + 0.1:.2f} ms allowed",
          m["enqueue_p50_ms"] <= 1.1 * m["raw_p50_ms"] + 0.1),
        t("encrypted put p50 <= 1.2x plain put (QLITE_ENCRYPTION_KEY)",
          f"{m['encrypted_p50_ratio']:.3f}x", m["encrypted_p50_ratio"] <= 1.2),
        t("cold producer <= 1.05x bare boto3", f"{m['cold_ratio']:.3f}x",
          m["cold_ratio"] <= 1.05),
        t("put_many >= 25,000 jobs/s", f"{m['put_many_jobs_s']:,.0f} jobs/s",
          m["put_many_jobs_s"] >= 25_000),
        t("drain (c=1) >= Huey", f"{m['drain_c1_vs_huey']:.3f}x Huey",
          m["drain_c1_vs_huey"] >= 1),
        t("drain (c=1) >= 5x Celery", f"{m['drain_c1_vs_celery']:.2f}x Celery",
          m["drain_c1_vs_celery"] >= 5),
        t("S3 requests per job <= 3.1 (single put, busy queue c=4)",
          f"{m['requests_single']:.2f}", m["requests_single"] <= 3.1),
        t("S3 requests per job <= 3.1 (single put, steady rate)",
          f"{m['requests_steady']:.2f}", m["requests_steady"] <= 3.1),
        t("idle <= 1 LIST per 10 s per queue (360/h)",
          f"{m['idle_lists_per_hour']:.0f} LIST/h", m["idle_lists_per_hour"] <= 360.5),
        t("idle as deployed (worker + Litestream) <= $1.50/month per queue",
          f"${m.get('idle_deployed_dollars_month', float('nan')):.2f}/month",
          m.get("idle_deployed_dollars_month", float("inf")) <= 1.5),
        t("pickup after idle p95 <= 1 s (a job put while the worker sleeps)",
          f"{m.get('pickup_idle_p95_ms', float('nan')):.0f} ms",
          m.get("pickup_idle_p95_ms", float("inf")) <= 1000),
        t(f"worker RSS < 200 MB with {sizes['memory_jobs']:,} pending (index)",
          f"{m['rss_index_mb']:.0f} MB", m["rss_index_mb"] < 200),
        t(f"worker RSS < 200 MB with {sizes['bulk_jobs']:,} pending (inbox)",
          f"{m['rss_inbox_mb']:.0f} MB", m["rss_inbox_mb"] < 200),
        t("S3 requests per job <= 0.05 (put_many packs, results batched, c=4)",
          f"{m['requests_c4']:.4f}", m["requests_c4"] <= 0.05),
    ]


# -- the printed table ----------------------------------------------------------------------

def _n(x: float, digits: int = 0) -> str:
    if x != x or x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    """(measure, qlite, reference, ratio, target: met?) rows, medians of the rounds."""
    m, s = r["medians"], r["sizes"]
    met = {t["target"]: ("MET" if t["met"] else "MISSED") for t in r["targets"]}
    tg = list(met)
    n = s["drain_jobs"]
    out = [
        ("S3 ceiling: small PUT/s", _n(m["ceiling_rps"]), f"{s['ceiling_threads']} threads",
         "", ""),
        ("1 enqueue p50, ms", _n(m["enqueue_p50_ms"], 2),
         f"raw put_object {_n(m['raw_p50_ms'], 2)}", f"{m['enqueue_p50_ratio']:.3f}x",
         f"<=1.10x+0.1ms: {met[tg[0]]}"),
        ("1 enqueue p99, ms", _n(m["enqueue_p99_ms"], 2),
         f"raw put_object {_n(m['raw_p99_ms'], 2)}", f"{m['enqueue_p99_ratio']:.3f}x", ""),
        ("2 cold producer, ms", _n(m["cold_qlite_ms"]), f"bare boto3 {_n(m['cold_boto3_ms'])}",
         f"{m['cold_ratio']:.3f}x", f"<=1.05x: {met[tg[1]]}"),
        (f"3 put_many {s['bulk_jobs']:,}, jobs/s", _n(m["put_many_jobs_s"]), "", "",
         f">=25,000: {met[tg[2]]}"),
    ]
    for c in (1, 4, "single"):
        label = (f"4 drain {n:,} packed c={c}, jobs/s" if c != "single" else
                 f"4 drain {s['single_jobs']:,} single puts c=4, jobs/s")
        out.append((label, _n(m[f"drain_c{c}_jobs_s"], 1),
                    f"Huey {_n(m['huey_drain_jobs_s'])}", f"{m[f'drain_c{c}_vs_huey']:.3f}x",
                    f">=Huey: {met[tg[3]]}" if c == 1 else ""))
        out.append(("", "", f"Celery {_n(m['celery_drain_jobs_s'])}",
                    f"{m[f'drain_c{c}_vs_celery']:.3f}x",
                    f">=5x Celery: {met[tg[4]]}" if c == 1 else ""))
        out.append(("", "", f"RQ {_n(m['rq_drain_jobs_s'])}",
                    f"{m[f'drain_c{c}_vs_rq']:.3f}x", ""))
        out.append(("", "", f"ceiling/req {_n(m[f'drain_c{c}_bound'], 1)}",
                    f"{m[f'drain_c{c}_of_bound']:.2f} of it", ""))
    out += [
        (f"4 put->result at {_n(m['steady_rate'], 1)}/s p50, ms", _n(m["steady_p50_ms"]),
         "", "", ""),
        (f"4 put->result at {_n(m['steady_rate'], 1)}/s p99, ms", _n(m["steady_p99_ms"]),
         "", "", ""),
    ]
    for peer, label in PEER_NAMES.items():
        out.append((f"5 enqueue 1 by 1 vs {label}, jobs/s", _n(m["enqueue_jobs_s"]),
                    f"{label} {_n(m[f'{peer}_enqueue_jobs_s'])}",
                    f"{m[f'enqueue_vs_{peer}']:.3f}x", ""))
    for case, label in (("single", "single puts, busy c=4"), ("c4", "put_many packs c=4"),
                        ("c1", "put_many packs c=1"), ("steady", "single puts, steady rate")):
        ops = {k.rsplit("_", 1)[1]: v for k, v in m.items()
               if k.startswith(f"requests_{case}_")}
        detail = " ".join(f"{op.upper()} {v:.4f}" for op, v in sorted(ops.items()) if v)
        target = {"single": f"<=3.1: {met[tg[5]]}", "steady": f"<=3.1: {met[tg[6]]}",
                  "c4": f"<=0.05: {met[tg[10]]}"}.get(case, "")
        out.append((f"6 S3 requests/job, {label}", f"{m[f'requests_{case}']:.4f}", detail, "",
                    target))
        out.append((f"6 $ per million jobs, {label}", f"{m[f'dollars_{case}']:.2f}", "", "",
                    ""))
    out += [
        ("6 idle LISTs per hour per queue", _n(m["idle_lists_per_hour"]),
         f"${m['idle_dollars_per_month']:.2f}/month", "", f"<=360: {met[tg[7]]}"),
        (f"7 worker RSS, {s['memory_jobs']:,} rows in index, MB", _n(m["rss_index_mb"]), "",
         "", f"<200: {met[tg[8]]}"),
        (f"7 worker RSS, {s['bulk_jobs']:,} in inbox, MB", _n(m["rss_inbox_mb"]), "", "",
         f"<200: {met[tg[9]]}"),
        (f"7 worker RSS, draining {n:,} (c=4), MB", _n(m["drain_c4_rss_mb"]), "", "", ""),
    ]
    return out


def table(r: dict) -> str:
    header = ("measure", "qlite", "reference", "ratio", "target")
    body = rows(r)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(5)]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: tuple) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(c.ljust(w) if i in (0, 2, 4) else c.rjust(w)
                         for i, (c, w) in enumerate(cells))
    sizes = r["sizes"]
    title = (f"qlite bench: medians of {sizes['runs']} rounds; ratios are qlite/reference "
             f"within each round, then the median")
    return "\n".join([title, line, fmt(header), line, *map(fmt, body), line])


# -- the chart ------------------------------------------------------------------------------

def chart(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, s = r["medians"], r["sizes"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.8))

    names = ["qlite c=1", "qlite c=4", "Huey", "RQ", "Celery"]
    values = [m["drain_c1_jobs_s"], m["drain_c4_jobs_s"], m["huey_drain_jobs_s"],
              m["rq_drain_jobs_s"], m["celery_drain_jobs_s"]]
    bars = ax1.bar(names, values, color=["C0", "C0", "C1", "C2", "C3"])
    ax1.bar_label(bars, fmt="%.0f", fontsize=8)
    ax1.axhline(m["drain_c4_bound"], color="k", ls="--", lw=1,
                label="S3 ceiling / worker requests per job (c=4)")
    ax1.set_yscale("log")
    ax1.set_ylabel("jobs/s (log)")
    ax1.set_title(f"drain of {s['drain_jobs']:,} no-op jobs, one worker")
    ax1.legend(fontsize=8)

    names = ["qlite put", "qlite put_many", "Huey", "RQ", "Celery"]
    values = [m["enqueue_jobs_s"], m["put_many_jobs_s"], m["huey_enqueue_jobs_s"],
              m["rq_enqueue_jobs_s"], m["celery_enqueue_jobs_s"]]
    bars = ax2.bar(names, values, color=["C0", "C0", "C1", "C2", "C3"])
    ax2.bar_label(bars, fmt="%.0f", fontsize=8)
    ax2.axhline(25_000, color="k", ls=":", lw=1, label="put_many target 25,000/s")
    ax2.set_yscale("log")
    ax2.set_ylabel("jobs/s (log)")
    ax2.set_title("enqueue")
    ax2.legend(fontsize=8)

    labels = ["p50", "p99"]
    x = range(len(labels))
    q = [m["enqueue_p50_ms"], m["enqueue_p99_ms"]]
    raw = [m["raw_p50_ms"], m["raw_p99_ms"]]
    ax3.bar([i - 0.2 for i in x], q, 0.4, label="qlite Client.put")
    ax3.bar([i + 0.2 for i in x], raw, 0.4, label="raw boto3 put_object")
    ax3.set_xticks(list(x), labels)
    ax3.set_ylabel("ms")
    ax3.set_title(f"enqueue latency (put->result at {m['steady_rate']:.0f}/s: "
                  f"p50 {m['steady_p50_ms']:.0f} ms)", fontsize=10)
    ax3.legend(fontsize=8)

    machine = r["machine"]
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=15)
    fig.suptitle(f"qlite bench, medians of {s['runs']} rounds - {machine['nproc']} x "
                 f"{machine['cpu']}, Python {machine['python']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
