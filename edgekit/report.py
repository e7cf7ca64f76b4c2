"""Reports: the terminal table (rich), JSON, CSV, Markdown and PNG plots.

One report may merge several result files (runs on several devices); every row
then carries a ``run`` label taken from its environment. Plots use matplotlib's
Agg backend, imported only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.fileio import write_json

REPORT_SCHEMA = "edgekit-report/1"


def _fmt(v, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def table(rows: list[dict], title: str = "edgekit benchmark"):
    """A ``rich.table.Table`` with one row per target."""
    from rich.table import Table

    t = Table(title=title, header_style="bold")
    for col, just in [
        ("target", "left"),
        ("status", "left"),
        ("top-1 %", "right"),
        ("drop pts", "right"),
        ("p50 ms", "right"),
        ("p90 ms", "right"),
        ("p99 ms", "right"),
        ("speedup", "right"),
        ("img/s", "right"),
        ("size MB", "right"),
        ("size ratio", "right"),
        ("FP32 nodes", "right"),
        ("RSS MB", "right"),
    ]:
        t.add_column(col, justify=just)
    from rich.markup import escape

    multi = _multi_run(rows)
    for r in rows:
        cells = _cells(r, multi)
        cells[1] = escape(cells[1])  # reasons hold "edgekit-toolchain[gpu]"-like text, not markup
        t.add_row(*cells)
    return t


def _cells(r: dict, multi: bool) -> list[str]:
    """A row's figures as text, in the column order of the table and the Markdown."""
    lat = r.get("latency_ms") or {}
    thr = r.get("throughput_ips") or {}
    best = max((v for v in thr.values() if v), default=None)
    status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
    return [
        row_name(r, multi),
        status,
        _fmt(r.get("top1")),
        _fmt(r.get("top1_drop"), "+.2f"),
        _fmt(lat.get("p50"), ".3f"),
        _fmt(lat.get("p90"), ".3f"),
        _fmt(lat.get("p99"), ".3f"),
        _fmt(r.get("speedup"), ".2f") + ("x" if r.get("speedup") else ""),
        _fmt(best, ".0f"),
        _fmt(r.get("size_mb"), ".3f"),
        _fmt(r.get("size_ratio"), ".3f"),
        _fmt(r.get("fp32_nodes"), "d"),
        _fmt(r.get("peak_rss_mb"), ".0f"),
    ]


def print_table(rows: list[dict], title: str = "edgekit benchmark", console=None) -> None:

    (console or make_console()).print(table(rows, title))


def make_console(stderr: bool = False):
    """A rich Console; 160 columns wide when writing to a pipe or a log file, not 80."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=160)
    return console


def write_report(
    path: str | Path,
    rows: list[dict],
    environment: dict,
    config: dict,
    meta: dict | None = None,
    force: bool = True,
) -> Path:
    """Write the JSON report (atomically).

    Raises:
        EdgekitError: ``path`` exists and ``force`` is False, or a file-system fault.
    """
    return write_json(
        path,
        {
            "schema": REPORT_SCHEMA,
            "environment": environment,
            "config": config,
            "meta": meta or {},
            "rows": rows,
        },
        force=force,
    )


# ---------------------------------------------------------------------------
# Loading and merging result files
# ---------------------------------------------------------------------------

#: Columns of the CSV (and the order of the flattened figures).
LATENCY_KEYS = ("min", "mean", "p50", "p90", "p99", "max", "cv", "queries", "duration_s")


def run_label(environment: dict, fallback: str) -> str:
    """A short label for one run: host and device (GPU name, else CPU model)."""
    env = environment or {}
    host = env.get("host") or fallback
    gpus = env.get("gpus") or []
    dev = gpus[0].split(",")[0] if gpus else (env.get("cpu") or env.get("machine") or "")
    dev = " ".join(str(dev).replace("(R)", "").replace("(TM)", "").replace("CPU", "").split())
    return f"{host} ({dev})" if dev else host


def load_report(path: str | Path) -> dict:
    """Read one JSON report written by :func:`write_report`.

    Raises:
        EdgekitError: missing file, invalid JSON, not an edgekit report, or a
            field of the wrong type (:func:`report_schema`), naming the file and field.
    """
    import json

    from edgekit.errors import EdgekitError

    p = Path(path)
    if not p.is_file():
        raise EdgekitError(f"report not found: {p}")
    try:
        d = json.loads(p.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise EdgekitError(f"{p} is not valid JSON: {type(e).__name__}: {e}") from None
    except OSError as e:
        raise EdgekitError(f"cannot read {p}: {e.strerror or e}") from None
    if not isinstance(d, dict) or d.get("schema") != REPORT_SCHEMA or "rows" not in d:
        raise EdgekitError(
            f"{p} is not an edgekit report (schema {REPORT_SCHEMA})",
            "give the JSON written by edgekit bench or edgekit run",
        )
    from edgekit.schema import validate

    hint = "give the JSON written by edgekit bench or run"
    validate(d, report_schema(), str(p), hint=hint)
    check_predictions(d, str(p), hint)
    return d


#: Largest class index a report without class names may hold (a confusion matrix is C x C).
MAX_UNNAMED_CLASSES = 4096


def check_predictions(d: dict, where: str, hint: str | None = None) -> None:
    """Test labels and per-row predictions agree in length and index only known classes.

    Indices must be below ``len(meta.classes)`` (or :data:`MAX_UNNAMED_CLASSES`
    without class names), so a crafted report cannot ask for a huge confusion matrix.

    Raises:
        EdgekitError: naming the file and the row.
    """
    from edgekit.errors import EdgekitError

    meta = d.get("meta") or {}
    labels, classes = meta.get("labels"), meta.get("classes")
    bound = len(classes) if classes else MAX_UNNAMED_CLASSES
    for what, values in [("meta.labels", labels)] + [
        (f"rows[{i}].predictions", r.get("predictions")) for i, r in enumerate(d["rows"])
    ]:
        if not values:
            continue
        if max(values) >= bound:
            raise EdgekitError(
                f"{where}: {what} holds class index {max(values)}, but there are only "
                f"{bound} classes" + ("" if classes else " (no class names)"),
                hint,
            )
        if labels and what != "meta.labels" and len(values) != len(labels):
            raise EdgekitError(
                f"{where}: {what} has {len(values)} entries but meta.labels has {len(labels)}",
                hint,
            )


#: The largest latency a report may hold (ms; one day): larger values overflow the plots.
MAX_LATENCY_MS = 86_400_000.0


def report_schema():
    """The :mod:`edgekit.schema` spec of a report file (``edgekit-report/1``).

    Rows are tables with a string ``target`` and ``status`` and, where present,
    typed figures (numbers or null; latencies in ms, sizes in MB, top-1 in
    percent); other keys in a row are kept as they are.
    """
    from edgekit.schema import Choice, Dict, Int, ListOf, MapOf, Num, Str

    num = Num(nullable=True)

    def ms(**kw):  # a latency: bounded, so the plots' bins and axes stay finite
        return Num(min=0, max=MAX_LATENCY_MS, **kw)

    pct = Num(min=0, max=100, nullable=True)
    text = Str(nullable=True)
    row = Dict(
        {
            "target": Str(r"[^\x00]{1,256}", required=True),
            "status": Choice("ok", "failed", "unavailable", required=True),
            "reason": text,
            "backend": text,
            "precision": text,
            "device": text,
            "run": text,
            "threads": Int(min=0, nullable=True),
            "size_mb": Num(min=0, nullable=True),
            "size_ratio": num,
            "speedup": num,
            "top1": pct,
            "top5": pct,
            "top1_drop": num,
            "latency_ms": Dict({"p50": ms(required=True)}, extra=True, nullable=True),
            "latency_samples_ms": ListOf(ms(), nullable=True),
            "throughput_ips": MapOf(num, keys=Str(r"[0-9]{1,7}"), nullable=True),
            "predictions": ListOf(Int(min=0), nullable=True),
            "peak_rss_mb": num,
            "gpu_mem_mb": num,
            "gpu": Dict({}, extra=True, nullable=True),
            "fp32_nodes": Int(min=0, nullable=True),
        },
        extra=True,
    )
    table = Dict({}, extra=True, nullable=True)
    environment = Dict(
        {
            "host": text,
            "cpu": text,
            "machine": text,
            "system": text,
            "time": text,
            "gpus": ListOf(Str(), nullable=True),
            "isa": Dict({}, extra=True, nullable=True),
            "cores": Int(min=0, nullable=True),
            "threads": Int(min=0, nullable=True),
        },
        extra=True,
        nullable=True,
    )
    return Dict(
        {
            "schema": Choice(REPORT_SCHEMA, required=True),
            "rows": ListOf(row, required=True),
            "environment": environment,
            "config": table,
            "meta": Dict(
                {
                    "labels": ListOf(Int(min=0), nullable=True),
                    "classes": ListOf(Str(), nullable=True),
                    "run": text,
                },
                extra=True,
                nullable=True,
            ),
            "runs": MapOf(Dict({}, extra=True), nullable=True),
        },
        extra=True,
    )


def merge_reports(reports: list[dict], names: list[str] | None = None) -> dict:
    """Merge reports (several runs or devices) into one.

    Every row gets ``run``: a label from its report's environment (host and
    device; ``#2``, ``#3`` ... when two runs share one). The test labels and
    class names of a report's meta are kept once per run (for confusion matrices).

    Returns:
        ``{"schema", "runs": {label: {"environment", "config", "meta", "source"}},
        "rows": [...]}``; with one report, also its ``environment``/``config``/``meta``.
    """
    runs: dict[str, dict] = {}
    rows: list[dict] = []
    for i, rep in enumerate(reports):
        env = rep.get("environment") or {}
        meta = rep.get("meta") or {}
        base = meta.get("run") or run_label(env, f"run{i + 1}")
        label, k = base, 2
        while label in runs:
            label, k = f"{base} #{k}", k + 1
        runs[label] = {
            "environment": env,
            "config": rep.get("config") or {},
            "meta": {k2: v for k2, v in meta.items() if k2 not in ("labels",)},
            "source": (names or [None] * len(reports))[i],
            "labels": meta.get("labels"),
        }
        for r in rep["rows"]:
            r = dict(r)
            r["run"] = label
            rows.append(r)
    out = {"schema": REPORT_SCHEMA, "runs": runs, "rows": rows}
    if len(reports) == 1:
        out.update(
            environment=reports[0].get("environment") or {},
            config=reports[0].get("config") or {},
            meta=runs[next(iter(runs))]["meta"],
        )
    else:
        out.update(environment={}, config={}, meta={"merged": list(runs)})
    return out


def _multi_run(rows: list[dict]) -> bool:
    return len({r.get("run") for r in rows}) > 1


def row_name(r: dict, multi: bool) -> str:
    """The target's name, with ``@ run`` when rows come from several runs."""
    return f"{r['target']} @ {r['run']}" if multi and r.get("run") else str(r["target"])


# ---------------------------------------------------------------------------
# CSV and Markdown
# ---------------------------------------------------------------------------


def _batch_sizes(rows: list[dict]) -> list[str]:
    sizes = {k for r in rows for k in (r.get("throughput_ips") or {})}
    return sorted(sizes, key=int)


def flat_row(r: dict, batch_sizes: list[str]) -> dict:
    """One row's figures as a flat dict (CSV columns); samples and predictions excluded."""
    lat = r.get("latency_ms") or {}
    thr = r.get("throughput_ips") or {}
    out = {
        "run": r.get("run", ""),
        "target": r.get("target"),
        "backend": r.get("backend"),
        "precision": r.get("precision"),
        "status": r.get("status"),
        "reason": r.get("reason", ""),
        "device": r.get("device"),
        "threads": r.get("threads"),
        "top1": r.get("top1"),
        "top5": r.get("top5"),
        "top1_drop": r.get("top1_drop"),
        "size_mb": r.get("size_mb"),
        "size_ratio": r.get("size_ratio"),
        "speedup": r.get("speedup"),
        "fp32_nodes": r.get("fp32_nodes"),
    }
    for k in LATENCY_KEYS:
        out[f"latency_{k}" + ("" if k in ("cv", "queries", "duration_s") else "_ms")] = lat.get(k)
    for b in batch_sizes:
        out[f"throughput_bs{b}_ips"] = thr.get(b)
    out["peak_rss_mb"] = r.get("peak_rss_mb")
    out["gpu_mem_mb"] = r.get("gpu_mem_mb")
    return out


def write_csv(path: str | Path, rows: list[dict], force: bool = True) -> Path:
    """Every figure of every row as CSV (one line per target and run)."""
    import csv

    from edgekit.fileio import atomic_path

    sizes = _batch_sizes(rows)
    flat = [flat_row(r, sizes) for r in rows]
    with atomic_path(path, force=force) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat_row({}, sizes)))
        w.writeheader()
        for fr in flat:
            w.writerow({k: "" if v is None else v for k, v in fr.items()})
    return Path(path)


def markdown_table(rows: list[dict]) -> str:
    """A GitHub-flavoured Markdown table of the main figures (for a README)."""
    multi = _multi_run(rows)
    head = [
        "target",
        "status",
        "top-1 %",
        "drop pts",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "speedup",
        "best img/s",
        "size MB",
        "size ratio",
        "FP32 nodes",
        "peak RSS MB",
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|",
    ]
    for r in rows:
        cells = _cells(r, multi)
        cells[1] = cells[1].replace("|", "\\|").replace("\n", " ")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def environment_markdown(runs: dict) -> str:
    """One line per run: host, CPU, cores, ISA flags, GPU, thread settings."""
    out = []
    for label, run in runs.items():
        env = run.get("environment") or {}
        isa = ", ".join(k.upper() for k, v in (env.get("isa") or {}).items() if v) or "none"
        gpus = "; ".join(env.get("gpus") or []) or "none"
        out.append(
            f"- **{label}**: {env.get('cpu', '?')}, {env.get('cores', '?')} cores, ISA {isa}, "
            f"GPU {gpus}, threads {env.get('threads')}, {env.get('time', '')}"
        )
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Plots (matplotlib, Agg backend)
# ---------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes.

    A point is (latency, top-1): lower latency and higher top-1 are better.
    Returned in order of increasing latency.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _save(fig, path: Path, force: bool) -> Path:
    from edgekit.fileio import atomic_path

    plt = _plt()
    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in these results", ha="center", va="center")
    ax.set_axis_off()


def plot_accuracy_latency(rows: list[dict], path: Path, force: bool = True) -> Path:
    """top-1 against p50 latency, one point per target, the Pareto front marked."""
    plt = _plt()
    multi = _multi_run(rows)
    pts = [
        (r["latency_ms"]["p50"], r["top1"], row_name(r, multi))
        for r in rows
        if r.get("status") == "ok" and r.get("latency_ms") and r.get("top1") is not None
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not pts:
        _no_data(ax, "targets with both top-1 and latency")
        return _save(fig, path, force)
    front = pareto_front([(p[0], p[1]) for p in pts])
    for i, (x, y, name) in enumerate(pts):
        on = i in front
        ax.scatter(x, y, s=60 if on else 35, c="C3" if on else "C0", zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    fx = [pts[i][0] for i in front]
    fy = [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", c="C3", lw=1.2, label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy against latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path, force)


def plot_size_accuracy(rows: list[dict], path: Path, force: bool = True) -> Path:
    """Artifact size (MB) against top-1."""
    plt = _plt()
    multi = _multi_run(rows)
    pts = [
        (r["size_mb"], r["top1"], row_name(r, multi))
        for r in rows
        if r.get("status") == "ok" and r.get("size_mb") and r.get("top1") is not None
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not pts:
        _no_data(ax, "targets with both size and top-1")
        return _save(fig, path, force)
    for x, y, name in pts:
        ax.scatter(x, y, c="C0", zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("artifact size (MB, log scale)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Size against accuracy")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path, force)


def plot_latency_distribution(rows: list[dict], path: Path, force: bool = True) -> Path:
    """Box plot of the batch-1 latency samples of every target (p1..p99 whiskers)."""
    plt = _plt()
    multi = _multi_run(rows)
    data = [
        (row_name(r, multi), r["latency_samples_ms"])
        for r in rows
        if r.get("status") == "ok" and r.get("latency_samples_ms")
    ]
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(data), 3) + 1.5))
    if not data:
        _no_data(ax, "latency samples")
        return _save(fig, path, force)
    kw = {"whis": (1, 99), "showfliers": True, "flierprops": {"markersize": 2, "alpha": 0.4}}
    try:  # matplotlib >= 3.10
        ax.boxplot([d[1] for d in data], orientation="horizontal", **kw)
    except TypeError:
        ax.boxplot([d[1] for d in data], vert=False, **kw)
    ax.set_yticks(range(1, len(data) + 1), [d[0] for d in data], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency per query, batch 1 (ms, log scale); whiskers p1..p99")
    ax.set_title("Latency distribution")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return _save(fig, path, force)


def plot_throughput(rows: list[dict], path: Path, force: bool = True) -> Path:
    """Images per second against batch size, one line per target."""
    plt = _plt()
    multi = _multi_run(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for r in rows:
        thr = {int(k): v for k, v in (r.get("throughput_ips") or {}).items() if v}
        if r.get("status") != "ok" or not thr:
            continue
        bs = sorted(thr)
        ax.plot(bs, [thr[b] for b in bs], marker="o", label=row_name(r, multi))
        drawn += 1
    if not drawn:
        _no_data(ax, "throughput figures")
        return _save(fig, path, force)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (log scale)")
    ax.set_ylabel("images / s (log scale)")
    ax.set_title("Throughput against batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, force)


def confusion_matrix(labels, predictions, num_classes: int | None = None):
    """Counts int64 [C, C]: row = true class, column = predicted class."""
    import numpy as np

    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} predictions")
    c = int(num_classes or max(y.max(initial=0), p.max(initial=0)) + 1)
    return np.bincount(y * c + p, minlength=c * c).reshape(c, c)


def plot_confusion(
    r: dict, labels, path: Path, force: bool = True, multi: bool = False, classes=None
) -> Path:
    """One target's confusion matrix (PNG), from its predictions and the test ``labels``."""
    import numpy as np

    plt = _plt()
    cm = confusion_matrix(labels, r["predictions"], len(classes) if classes else None)
    c = cm.shape[0]
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * c + 2), max(3.5, 0.45 * c + 1.5)))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    names = classes or [str(i) for i in range(c)]
    if c <= 30:
        ax.set_xticks(range(c), names, rotation=90, fontsize=7)
        ax.set_yticks(range(c), names, fontsize=7)
        if c <= 12:
            thresh = cm.max() / 2
            for i in range(c):
                for j in range(c):
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if cm[i, j] > thresh else "black",
                    )
    acc = np.trace(cm) / max(cm.sum(), 1) * 100
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{row_name(r, multi)}: top-1 {acc:.2f}%", fontsize=9)
    return _save(fig, path, force)


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "target"


PLOTS = {
    "accuracy_vs_latency.png": plot_accuracy_latency,
    "size_vs_accuracy.png": plot_size_accuracy,
    "latency_distribution.png": plot_latency_distribution,
    "throughput_vs_batch.png": plot_throughput,
}


def write_all(
    report: dict,
    out_dir: str | Path,
    *,
    confusion: bool = False,
    force: bool = True,
    stem: str = "report",
) -> list[Path]:
    """Write the full report of merged results into ``out_dir``.

    Files: ``STEM.json`` (every figure and sample), ``STEM.csv``, ``STEM.md``,
    the four PNG plots of :data:`PLOTS`, and with ``confusion`` one
    ``confusion_TARGET.png`` per ``ok`` row with predictions and labels.

    Args:
        report: :func:`merge_reports` output (or a single report dict).
        force: replace existing files of the same names.

    Raises:
        EdgekitError: a file exists and ``force`` is False; ``out_dir`` is a file;
            ``confusion`` without test labels in the results; a file-system fault.
    """
    from edgekit.errors import EdgekitError
    from edgekit.fileio import check_writable, fs_errors

    out = Path(out_dir)
    rows = report["rows"]
    if out.exists() and not out.is_dir():
        raise EdgekitError(
            f"{out} is a file, not a directory", "give --output-dir a directory to write into"
        )
    names = [f"{stem}.json", f"{stem}.csv", f"{stem}.md", *PLOTS]
    if not force:
        for n in names:
            check_writable(out / n, force=False)
    with fs_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    written = [write_json(out / f"{stem}.json", report, force=force)]
    written.append(write_csv(out / f"{stem}.csv", rows, force=force))
    md = markdown_table(rows)
    if report.get("runs"):
        md += "\n" + environment_markdown(report["runs"])
    from edgekit.fileio import atomic_path

    with atomic_path(out / f"{stem}.md", force=force) as tmp:
        tmp.write_text(md)
    written.append(out / f"{stem}.md")
    for name, fn in PLOTS.items():
        written.append(fn(rows, out / name, force=force))
    if confusion:
        multi = _multi_run(rows)
        runs = report.get("runs") or {}

        def run_of(r):
            return runs.get(r.get("run"), {})

        usable = [r for r in rows if r.get("status") == "ok" and r.get("predictions")]
        if not usable:
            raise EdgekitError("--confusion needs results with an accuracy pass (predictions)")
        if not any(run_of(r).get("labels") for r in usable):
            raise EdgekitError(
                "--confusion needs the test labels, which these results do not hold",
                "re-run edgekit bench/run with this edgekit version",
            )
        for r in usable:
            run = run_of(r)
            if run.get("labels"):
                written.append(
                    plot_confusion(
                        r,
                        run["labels"],
                        out / f"confusion_{_slug(row_name(r, multi))}.png",
                        force,
                        multi,
                        classes=(run.get("meta") or {}).get("classes"),
                    )
                )
    return written


def make_report(
    paths: list[str | Path], out_dir: str | Path, *, confusion: bool = False, force: bool = False
) -> tuple[dict, list[Path]]:
    """``edgekit report``: load and merge JSON results, write every format.

    Returns:
        ``(merged report, written paths)``.
    """
    from edgekit.errors import EdgekitError

    if not paths:
        raise EdgekitError("no result files given", "pass one or more report JSON files")
    reps = [load_report(p) for p in paths]
    merged = merge_reports(reps, [str(p) for p in paths])
    return merged, write_all(merged, out_dir, confusion=confusion, force=force)
