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
        f[f"drain_c{c}_wall_jobs_s"] = d.get("wall_jobs_s", d["jobs_s"])
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
    if "huey_c4" in rnd:  # Huey with 4 worker threads, against qlite at concurrency 4
        f["huey_c4_drain_jobs_s"] = rnd["huey_c4"]["drain_jobs_s"]
        f["drain_c4_vs_huey_c4"] = rnd["drain_c4"]["jobs_s"] / rnd["huey_c4"]["drain_jobs_s"]
    for peer in PEER_NAMES:
        f[f"{peer}_enqueue_jobs_s"] = rnd[peer]["enqueue_jobs_s"]
        f[f"{peer}_drain_jobs_s"] = rnd[peer]["drain_jobs_s"]
        f[f"enqueue_vs_{peer}"] = lat["qlite_jobs_s"] / rnd[peer]["enqueue_jobs_s"]
    return f


def partial(rnd: dict) -> dict:
    """The headline figures of a round that ran only some cases (python -m bench only), with
    the ratios whose both sides ran."""
    f: dict = {}
    if "ceiling" in rnd:
        f["ceiling_rps"] = round(rnd["ceiling"], 1)
    for case in ("drain_c1", "drain_c4", "drain_single"):
        if case in rnd:
            f[f"{case}_jobs_s"] = round(rnd[case]["jobs_s"], 1)
            f[f"{case}_wall_jobs_s"] = round(rnd[case].get("wall_jobs_s", float("nan")), 1)
            f[f"{case}_requests"] = round(sum(rnd[case]["worker_requests"].values()), 4)
    for peer in (*PEER_NAMES, "huey_c4"):
        if peer in rnd:
            f[f"{peer}_drain_jobs_s"] = round(rnd[peer]["drain_jobs_s"], 1)
    for mine, theirs in (("drain_c1", "huey"), ("drain_c4", "huey_c4"), ("drain_c1", "celery"),
                         ("drain_c4", "celery")):
        if mine in rnd and theirs in rnd:
            f[f"{mine}_vs_{theirs}"] = round(rnd[mine]["jobs_s"] / rnd[theirs]["drain_jobs_s"], 3)
    if "ceiling" in rnd and "drain_single" in rnd:
        bound = rnd["ceiling"] / sum(rnd["drain_single"]["worker_requests"].values())
        f["drain_single_of_bound"] = round(rnd["drain_single"]["jobs_s"] / bound, 3)
    if "cold" in rnd:
        cold = rnd["cold"]
        f.update({"cold_qlite_ms": round(cold["qlite_ms"], 1),
                  "cold_boto3_ms": round(cold["boto3_ms"], 1),
                  "cold_ratio": round(cold["qlite_ms"] / cold["boto3_ms"], 3)})
    if "steady" in rnd:
        st = rnd["steady"]
        f.update({"steady_rate": round(st["rate"], 1), "steady_p50_ms": round(st["p50_ms"]),
                  "steady_p99_ms": round(st["p99_ms"]), "steady_visible": st["visible"],
                  "steady_jobs": st["jobs"],
                  "steady_requests": round(sum(st["requests"].values()), 3),
                  "steady_requests_by_op": {k: round(v, 4) for k, v in st["requests"].items()},
                  "steady_split_ms": st.get("split_ms")})
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
        # Issue 20 (NaN, from a run without Huey at 4 workers, fails rather than passes).
        t("drain (c=4) >= Huey with 4 workers",
          f"{m.get('drain_c4_vs_huey_c4', float('nan')):.3f}x Huey (4 workers)",
          m.get("drain_c4_vs_huey_c4", float("nan")) >= 1),
        t("put -> visible result p50 <= 250 ms, p99 <= 600 ms (steady single puts)",
          f"p50 {m['steady_p50_ms']:.0f} ms, p99 {m['steady_p99_ms']:.0f} ms at "
          f"{m['steady_rate']:.0f} jobs/s",
          m["steady_p50_ms"] <= 250 and m["steady_p99_ms"] <= 600),
        t("single-put drain >= 0.8 of S3 ceiling / requests per job",
          f"{m['drain_csingle_of_bound']:.2f} of it", m["drain_csingle_of_bound"] >= 0.8),
    ]


# -- the printed table ----------------------------------------------------------------------

def _n(x: float, digits: int = 0) -> str:
    if x != x or x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    """(measure, qlite, reference, ratio, target: met?) rows, medians of the rounds."""
    m, s = r["medians"], r["sizes"]
    nan = float("nan")
    met = {t["target"]: ("MET" if t["met"] else "MISSED") for t in r["targets"]}

    def verdict(prefix: str, suffix: str = "") -> str:
        """MET or MISSED of the target named ``prefix``...``suffix``."""
        return next((v for k, v in met.items() if k.startswith(prefix) and k.endswith(suffix)),
                    "n/a")

    n = s["drain_jobs"]
    out = [
        ("S3 ceiling: small PUT/s", _n(m["ceiling_rps"]), f"{s['ceiling_threads']} threads",
         "", ""),
        ("1 enqueue p50, ms", _n(m["enqueue_p50_ms"], 2),
         f"raw put_object {_n(m['raw_p50_ms'], 2)}", f"{m['enqueue_p50_ratio']:.3f}x",
         f"<=1.10x+0.1ms: {verdict('enqueue p50')}"),
        ("1 enqueue p99, ms", _n(m["enqueue_p99_ms"], 2),
         f"raw put_object {_n(m['raw_p99_ms'], 2)}", f"{m['enqueue_p99_ratio']:.3f}x", ""),
        ("2 cold producer, ms", _n(m["cold_qlite_ms"]), f"bare boto3 {_n(m['cold_boto3_ms'])}",
         f"{m['cold_ratio']:.3f}x", f"<=1.05x: {verdict('cold producer')}"),
        (f"3 put_many {s['bulk_jobs']:,}, jobs/s", _n(m["put_many_jobs_s"]), "", "",
         f">=25,000: {verdict('put_many >=')}"),
    ]
    for c in (1, 4, "single"):
        label = (f"4 drain {n:,} packed c={c}, jobs/s" if c != "single" else
                 f"4 drain {s['single_jobs']:,} single puts c=4, jobs/s")
        out.append((label, _n(m[f"drain_c{c}_jobs_s"], 1),
                    f"Huey {_n(m['huey_drain_jobs_s'])}", f"{m[f'drain_c{c}_vs_huey']:.3f}x",
                    f">=Huey: {verdict('drain (c=1) >= Huey')}" if c == 1 else ""))
        out.append(("", "", f"Celery {_n(m['celery_drain_jobs_s'])}",
                    f"{m[f'drain_c{c}_vs_celery']:.3f}x",
                    f">=5x Celery: {verdict('drain (c=1) >= 5x Celery')}" if c == 1 else ""))
        out.append(("", "", f"RQ {_n(m['rq_drain_jobs_s'])}",
                    f"{m[f'drain_c{c}_vs_rq']:.3f}x", ""))
        if c == 4:
            out.append(("", "", f"Huey 4 workers {_n(m.get('huey_c4_drain_jobs_s', nan))}",
                        f"{m.get('drain_c4_vs_huey_c4', nan):.3f}x",
                        f">=Huey (4): {verdict('drain (c=4) >= Huey with 4')}"))
        out.append(("", "", f"ceiling/req {_n(m[f'drain_c{c}_bound'], 1)}",
                    f"{m[f'drain_c{c}_of_bound']:.2f} of it",
                    f">=0.8: {verdict('single-put drain')}" if c == "single" else ""))
        if c != "single":  # the ratios above are timed like the peers; start and stop too:
            out.append(("  (the worker's start and stop included)",
                        _n(m.get(f"drain_c{c}_wall_jobs_s", nan), 1), "", "", ""))
    out += [
        (f"4 put->result at {_n(m['steady_rate'], 1)}/s p50, ms", _n(m["steady_p50_ms"]),
         "", "", f"<=250 (p99 <=600): {verdict('put -> visible')}"),
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
        target = {"single": f"<=3.1: {verdict('S3 requests per job <= 3.1 (single put, b')}",
                  "steady": f"<=3.1: {verdict('S3 requests per job <= 3.1 (single put, s')}",
                  "c4": f"<=0.05: {verdict('S3 requests per job <= 0.05')}"}.get(case, "")
        out.append((f"6 S3 requests/job, {label}", f"{m[f'requests_{case}']:.4f}", detail, "",
                    target))
        out.append((f"6 $ per million jobs, {label}", f"{m[f'dollars_{case}']:.2f}", "", "",
                    ""))
    out += [
        ("6 idle LISTs per hour per queue", _n(m["idle_lists_per_hour"]),
         f"${m['idle_dollars_per_month']:.2f}/month", "",
         f"<=360: {verdict('idle <= 1 LIST')}"),
        (f"7 worker RSS, {s['memory_jobs']:,} rows in index, MB", _n(m["rss_index_mb"]), "",
         "", f"<200: {verdict('worker RSS', '(index)')}"),
        (f"7 worker RSS, {s['bulk_jobs']:,} in inbox, MB", _n(m["rss_inbox_mb"]), "", "",
         f"<200: {verdict('worker RSS', '(inbox)')}"),
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
    """One panel per case, qlite and the peers (or the bound) side by side in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, s = r["medians"], r["sizes"]
    fig, axes = plt.subplots(1, 5, figsize=(22, 5))
    nan = float("nan")

    def bars(ax, names, values, colors, title, ylabel="jobs/s", log=False):
        drawn = ax.bar(names, [0 if v != v else v for v in values], color=colors)
        ax.bar_label(drawn, labels=[_n(v) for v in values], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=15)

    q, peers = "C0", ["C1", "C3", "C2"]  # qlite, Huey, Celery, RQ: the same in every panel
    bars(axes[0], ["qlite", "Huey", "Celery", "RQ"],
         [m["drain_c1_jobs_s"], m["huey_drain_jobs_s"], m["celery_drain_jobs_s"],
          m["rq_drain_jobs_s"]], [q, *peers],
         f"drain {s['drain_jobs']:,} no-op jobs, 1 worker slot\n(qlite: put_many packs)")
    axes[0].axhline(5 * m["celery_drain_jobs_s"], color="C3", ls=":", lw=1,
                    label="5x Celery (target)")
    axes[0].legend(fontsize=8)
    bars(axes[1], ["qlite c=4", "Huey 4 workers"],
         [m["drain_c4_jobs_s"], m.get("huey_c4_drain_jobs_s", nan)], [q, peers[0]],
         f"drain {s['drain_jobs']:,} no-op jobs, 4 slots")
    bars(axes[2], ["qlite", "S3 ceiling /\nrequests per job"],
         [m["drain_csingle_jobs_s"], m["drain_csingle_bound"]], [q, "0.6"],
         f"drain {s['single_jobs']:,} single puts, c=4\n(bound by the S3 server)")
    axes[2].axhline(0.8 * m["drain_csingle_bound"], color="k", ls=":", lw=1,
                    label="0.8 of the bound (target)")
    axes[2].legend(fontsize=8)
    bars(axes[3], ["qlite put", "qlite\nput_many", "Huey", "RQ", "Celery"],
         [m["enqueue_jobs_s"], m["put_many_jobs_s"], m["huey_enqueue_jobs_s"],
          m["rq_enqueue_jobs_s"], m["celery_enqueue_jobs_s"]], [q, q, "C1", "C2", "C3"],
         "enqueue",
         log=True)
    bars(axes[4], ["enqueue p50", "enqueue p99", "put->result\np50",
                   "put->result\np99"],
         [m["enqueue_p50_ms"], m["enqueue_p99_ms"], m["steady_p50_ms"], m["steady_p99_ms"]],
         [q, q, "C4", "C4"], f"latency, ms (results at {m['steady_rate']:.0f} jobs/s)",
         ylabel="ms", log=True)
    axes[4].axhline(250, color="C4", ls=":", lw=1, label="p50 target 250 ms")
    axes[4].axhline(600, color="C4", ls="--", lw=1, label="p99 target 600 ms")
    axes[4].legend(fontsize=8)

    machine = r["machine"]
    fig.suptitle(f"qlite bench, medians of {s['runs']} rounds - {machine['nproc']} x "
                 f"{machine['cpu']}, Python {machine['python']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
