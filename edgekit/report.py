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


def _num(v, none: str = "-") -> str:
    """A latency or size with decimals by magnitude: 0.742, 12.35, 1115.2 (never cut)."""
    if v is None:
        return none
    a = abs(v)
    return format(v, ".3f" if a < 10 else ".2f" if a < 100 else ".1f")


#: (header, justify, wide-only) of the terminal table, in order.
COLUMNS = [
    ("target", "left", False),
    ("status", "left", False),
    ("top-1 %", "right", False),
    ("drop pts", "right", False),
    ("p50 ms", "right", False),
    ("p90 ms", "right", False),
    ("p99 ms", "right", True),
    ("size MB", "right", False),
    ("zip MB", "right", True),
    ("size ratio", "right", True),
    ("speedup", "right", False),
    ("best img/s", "right", True),
    ("CV", "right", True),
    ("FP32 nodes", "right", True),
    ("peak RSS MB", "right", True),
]

NOISE_NOTE = (
    "noisy: latency CV (samples up to p99) > {cv}, p90/p50 > {p90}, or round p50s differing > {spread}x; "
    "its latency figures (and speedup) are not reliable"
)


def _status(r: dict) -> str:
    if r["status"] == "ok":
        return "ok noisy" if r.get("noisy") else "ok"
    return r["status"]


def _cells(r: dict, multi: bool, wide: bool = True) -> list[str]:
    """A row's figures as text, in :data:`COLUMNS` order (wide-only ones dropped
    unless ``wide``); the status cell holds the status only (reasons are footnotes)."""
    lat = r.get("latency_ms") or {}
    thr = r.get("throughput_ips") or {}
    best = max((v for v in thr.values() if v), default=None)
    drop = r.get("top1_drop")
    if drop is not None and abs(drop) < 0.005:
        drop = 0.0  # never "-0.00"
    cells = [
        row_name(r, multi),
        _status(r),
        _fmt(r.get("top1")),
        _fmt(drop, ".2f"),
        _num(lat.get("p50")),
        _num(lat.get("p90")),
        _num(lat.get("p99")),
        _num(r.get("size_mb")),
        _num(r.get("zip_mb")),
        _fmt(r.get("size_ratio"), ".3f"),
        _fmt(r.get("speedup"), ".2f") + ("x" if r.get("speedup") else ""),
        _fmt(best, ".0f"),
        _fmt(lat.get("cv_p99", lat.get("cv")), ".2f"),
        _fmt(r.get("fp32_nodes"), "d"),
        _fmt(r.get("peak_rss_mb"), ".0f"),
    ]
    return [c for c, (_, _, w) in zip(cells, COLUMNS, strict=True) if wide or not w]


def table_parts(
    rows: list[dict], *, wide: bool = False, show_all: bool = False, short_runs: bool = True
) -> tuple[list[str], list[list[str]], list[str]]:
    """The terminal table as text: ``(headers, cell rows, notes under the table)``.

    Reasons of rows that are not ok become numbered footnotes (``failed [1]``), and
    so does a row's ``note`` (``ok [2]``: e.g. sparse weights that run dense);
    ``unavailable`` rows are hidden unless ``show_all`` (a note says how many);
    rows from several runs get a short ``run`` column (``#1``, ``#2`` ...) whose
    labels are listed in the notes (with ``short_runs=False`` the column holds the
    label itself).
    """
    from edgekit.harness import NOISY_CV, NOISY_P90_P50, NOISY_ROUND_SPREAD

    multi = _multi_run(rows)
    heads = [h for h, _, w in COLUMNS if wide or not w]
    runs = list(dict.fromkeys(r.get("run") for r in rows)) if multi else []
    if multi:
        heads.insert(1, "run")
    # every row unavailable: shown, or the table would be empty
    show_all = show_all or all(r.get("status") == "unavailable" for r in rows)
    shown = [r for r in rows if show_all or r.get("status") != "unavailable"]
    hidden = len(rows) - len(shown)
    notes: list[str] = []
    reasons: dict[str, int] = {}
    body = []
    for r in shown:
        cells = _cells(r, False, wide)
        if r.get("status") != "ok":
            why = " ".join(str(r.get("reason") or "no reason recorded").split())
            n = reasons.setdefault(why, len(reasons) + 1)
            cells[1] += f" [{n}]"
        if r.get("note"):
            n = reasons.setdefault(" ".join(str(r["note"]).split()), len(reasons) + 1)
            cells[1] += f" [{n}]"
        if multi:
            cells.insert(1, f"#{runs.index(r.get('run')) + 1}" if short_runs else str(r["run"]))
        body.append(cells)
    for why, n in reasons.items():
        notes.append(f"[{n}] {why}")
    if any(r.get("noisy") for r in shown):
        notes.append(NOISE_NOTE.format(cv=NOISY_CV, p90=NOISY_P90_P50, spread=NOISY_ROUND_SPREAD))
    acc = {r.get("accuracy_images") for r in shown if r.get("accuracy_images")}
    if acc:
        notes.append(
            "top-1 on the first " + "/".join(str(n) for n in sorted(acc)) + " test images only "
            "(--accuracy-images)"
        )
    if hidden:
        notes.append(f"{hidden} unavailable target(s) hidden; --all shows them")
    for i, label in enumerate(runs if short_runs else []):
        notes.append(f"run #{i + 1}: {label}")
    return heads, body, notes


def table(
    rows: list[dict],
    title: str = "edgekit benchmark",
    *,
    wide: bool = False,
    show_all: bool = False,
):
    """A ``rich.table.Table`` with one row per target (see :func:`table_parts`).

    Every column is as wide as its longest cell and never wraps, so names and
    numbers are never cut; the notes (footnotes) are not part of it
    (:func:`print_table` prints them under it).
    """
    return _table(table_parts(rows, wide=wide, show_all=show_all), title)


def _table(parts, title: str, compact: bool = False):
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    heads, body, _ = parts
    just = {h: j for h, j, _ in COLUMNS} | {"run": "left"}
    kw = {"box": box.SIMPLE_HEAD, "show_edge": False, "padding": (0, 0)} if compact else {}
    t = Table(title=title, header_style="bold", **kw)
    for i, h in enumerate(heads):
        width = max([len(h)] + [len(c[i]) for c in body])
        t.add_column(h, justify=just[h], no_wrap=True, min_width=width)
    for cells in body:
        t.add_row(*(escape(c) for c in cells))
    return t


def print_table(
    rows: list[dict],
    title: str = "edgekit benchmark",
    console=None,
    *,
    wide: bool = False,
    show_all: bool = False,
) -> None:
    """Print :func:`table` to stdout (or ``console``), its notes under it."""
    from rich.markup import escape

    console = console or make_console()
    parts = table_parts(rows, wide=wide, show_all=show_all)
    t = _table(parts, title)
    need = _natural_width(t)
    if need > console.width:  # no borders; still too wide: printed whole, never cut
        t = _table(parts, title, compact=True)
        need = _natural_width(t)
    console.print(t, width=max(need, console.width), crop=False)
    for note in parts[2]:
        console.print(escape(note), soft_wrap=False)


def _natural_width(renderable) -> int:
    """Columns ``renderable`` takes when nothing limits its width."""
    import io

    from rich.console import Console

    c = Console(file=io.StringIO(), width=10_000, color_system=None)
    c.print(renderable, crop=False)
    return max((len(line.rstrip()) for line in c.file.getvalue().splitlines()), default=0)


def make_console(stderr: bool = False):
    """A rich Console. Its width is the terminal's, or ``COLUMNS`` when set (in a
    pipe too); in a pipe without ``COLUMNS``, 120."""
    import os

    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        console = Console(stderr=stderr, highlight=False, width=120)
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
LATENCY_KEYS = (
    "min",
    "mean",
    "p50",
    "p90",
    "p99",
    "max",
    "cv",
    "cv_p99",
    "queries",
    "duration_s",
)


def run_label(environment: dict, fallback: str) -> str:
    """A short label for a run without ``--label``: host and the UTC date and time it
    was measured (``host 2026-11-28 10:21``); without a time, host and device."""
    env = environment or {}
    host = env.get("host") or fallback
    when = str(env.get("time") or "")[:16].replace("T", " ")
    if when:
        return f"{host} {when}"
    dev = _short_cpu(env)
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
    from edgekit.schema import Bool, Choice, Dict, Int, ListOf, MapOf, Num, Str

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
            "zip_mb": Num(min=0, nullable=True),
            "note": text,
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
            "noisy": Bool(nullable=True),
            "noise": Dict({}, extra=True, nullable=True),
            "speedup_range": ListOf(num, nullable=True),
            "accuracy_images": Int(min=1, nullable=True),
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
    flat: list[dict] = []  # a merged report (e.g. edgekit run's report.json): its runs
    flat_names: list = []
    for i, rep in enumerate(reports):
        parts = _split_runs(rep)
        flat.extend(parts)
        flat_names.extend([(names or [None] * len(reports))[i]] * len(parts))
    reports, names = flat, flat_names
    for i, rep in enumerate(reports):
        env = rep.get("environment") or {}
        meta = rep.get("meta") or {}
        base = meta.get("run") or run_label(env, f"run{i + 1}")
        label, k = base, 2
        source = (names or [None] * len(reports))[i]
        if label in runs and source:  # two runs of one host: tell them apart by file
            label = f"{base} ({'/'.join(Path(source).parts[-2:])})"
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
            if r.get("status") == "ok" and r.get("latency_ms") and "noisy" not in r:
                from edgekit.harness import noise_flags  # a report of an older edgekit

                flags = noise_flags(r["latency_ms"])
                r["noisy"] = flags.pop("noisy")
                r["noise"] = flags
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


def _split_runs(rep: dict) -> list[dict]:
    """A merged report (with ``runs``) as one plain report per run; others as they are.

    So a merged file, such as the ``report.json`` ``edgekit run`` writes, merges again
    with its test labels (kept per run) and its run labels."""
    runs = rep.get("runs")
    if not isinstance(runs, dict) or not runs:
        return [rep]
    out = []
    for label, run in runs.items():
        meta = dict(run.get("meta") or {})
        meta["run"] = label
        if run.get("labels") is not None:
            meta["labels"] = run["labels"]
        out.append(
            {
                "environment": run.get("environment") or {},
                "config": run.get("config") or {},
                "meta": meta,
                "rows": [r for r in rep["rows"] if r.get("run", label) == label],
            }
        )
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
        "zip_mb": r.get("zip_mb"),
        "size_ratio": r.get("size_ratio"),
        "speedup": r.get("speedup"),
        "fp32_nodes": r.get("fp32_nodes"),
    }
    for k in LATENCY_KEYS:
        out[f"latency_{k}" + ("" if k in ("cv", "cv_p99", "queries", "duration_s") else "_ms")] = (
            lat.get(k)
        )
    for b in batch_sizes:
        out[f"throughput_bs{b}_ips"] = thr.get(b)
    out["peak_rss_mb"] = r.get("peak_rss_mb")
    out["gpu_mem_mb"] = r.get("gpu_mem_mb")
    out["note"] = r.get("note", "")
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
    """A GitHub-flavoured Markdown table of every row and figure (for a README),
    its footnotes (reasons, noise, runs) under it."""
    heads, body, notes = table_parts(rows, wide=True, show_all=True, short_runs=False)
    just = {h: j for h, j, _ in COLUMNS} | {"run": "left"}
    lines = [
        "| " + " | ".join(heads) + " |",
        "|" + "|".join("---:" if just[h] == "right" else "---" for h in heads) + "|",
    ]
    for cells in body:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if notes:
        lines.append("")
        lines.extend(n.replace("\n", " ") + "  " for n in notes)
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


#: Built-in targets, in the order of their fixed colours (matplotlib's tab20 palette).
TARGET_ORDER = (
    "pytorch-fp32",
    "ort-cpu",
    "ort-cpu-int8",
    "ts-fp32",
    "ts-fx-int8",
    "ort-cuda",
    "ort-cuda-fp16",
    "ort-trt",
    "trt-fp32",
    "trt-fp16",
    "trt-int8",
)
_TAB20 = (0, 2, 6, 4, 8, 10, 12, 16, 18, 1, 3, 5, 7, 9, 11, 13, 17, 19, 14, 15)
#: Marker of a run's points in merged reports (first run: circles, second: squares ...).
RUN_MARKERS = "osD^vP*X"


def target_color(name: str) -> str:
    """The one colour of a target in every plot: a fixed tab20 colour for the built-in
    targets, and for others one chosen by a CRC-32 of the name (stable across runs)."""
    import zlib

    from matplotlib import colors

    cmap = _plt().get_cmap("tab20")
    if name in TARGET_ORDER:
        idx = _TAB20[TARGET_ORDER.index(name)]
    else:
        idx = _TAB20[len(TARGET_ORDER) + zlib.crc32(name.encode()) % (20 - len(TARGET_ORDER))]
    return colors.to_hex(cmap(idx))


def _run_marker(r: dict, runs: list) -> str:
    return RUN_MARKERS[runs.index(r.get("run")) % len(RUN_MARKERS)] if r.get("run") in runs else "o"


def _short_cpu(env: dict) -> str:
    gpus = env.get("gpus") or []
    dev = gpus[0].split(",")[0] if gpus else (env.get("cpu") or env.get("machine") or "")
    return " ".join(str(dev).replace("(R)", "").replace("(TM)", "").replace("CPU", "").split())


def plot_context(report: dict) -> str:
    """The subtitle of every plot: model, dataset, machine, threads and date of each run
    (one line per run, at most three)."""
    runs = report.get("runs") or {}
    items = [
        (label, run.get("environment") or {}, run.get("meta") or {}) for label, run in runs.items()
    ] or [(None, report.get("environment") or {}, report.get("meta") or {})]
    lines = []
    for label, env, meta in items[:3]:
        what = f"{meta.get('model') or 'model ?'} on {meta.get('dataset') or 'dataset ?'}"
        host = env.get("host") or "host ?"
        cpu = _short_cpu(env)
        threads = env.get("threads")
        when = str(env.get("time") or "")[:16].replace("T", " ") or "date ?"
        line = (
            f"{what} | {host}{f' ({cpu})' if cpu else ''} | "
            f"threads {threads if threads is not None else 'default'} | {when}"
        )
        lines.append(f"{label}: {line}" if len(items) > 1 else line)
    if len(items) > 3:
        lines.append(f"... and {len(items) - 3} more runs")
    return "\n".join(lines)


def _title(ax, what: str, context: str) -> None:
    ax.set_title(f"{what}\n{context}" if context else what, fontsize=9)


def _save(fig, path: Path, force: bool) -> Path:
    from edgekit.fileio import atomic_path

    plt = _plt()
    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in these results", ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])


def _axis_scale(ax, axis: str, values, unit: str) -> str:
    """Log scale only when the values span more than 20x; plain tick labels either way
    (never "3x10^-1"). Returns the axis label's scale note."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    vals = [v for v in values if v and v > 0]
    log = bool(vals) and max(vals) / min(vals) > 20
    target = ax.xaxis if axis == "x" else ax.yaxis
    if log:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        target.set_minor_formatter(NullFormatter())
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    return f"{unit}, log scale" if log else unit


def _legend(ax, handles=None, **kw) -> None:
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles=handles, fontsize=7, **kw)


def _run_handles(runs: list):
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], ls="", marker=RUN_MARKERS[i % len(RUN_MARKERS)], c="0.3", label=f"run: {r}")
        for i, r in enumerate(runs)
    ]


def fig_accuracy_latency(rows: list[dict], context: str = ""):
    """top-1 against p50 latency, one point per target (its colour), the Pareto front
    stepped through; noisy rows are hollow."""
    plt = _plt()
    multi = _multi_run(rows)
    runs = list(dict.fromkeys(r.get("run") for r in rows)) if multi else []
    pts = [
        r
        for r in rows
        if r.get("status") == "ok" and r.get("latency_ms") and r.get("top1") is not None
    ]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _title(ax, "Accuracy against latency (batch 1)", context)
    if not pts:
        _no_data(ax, "targets with both top-1 and latency")
        return fig
    xy = [(r["latency_ms"]["p50"], r["top1"]) for r in pts]
    front = pareto_front(xy)
    seen = set()
    for r, (x, y) in zip(pts, xy, strict=True):
        c = target_color(r["target"])
        noisy = bool(r.get("noisy"))
        ax.scatter(
            x,
            y,
            s=55,
            marker=_run_marker(r, runs),
            facecolors="none" if noisy else c,
            edgecolors=c,
            zorder=3,
            label=None if r["target"] in seen else r["target"],
        )
        seen.add(r["target"])
    fx = [xy[i][0] for i in front]
    fy = [xy[i][1] for i in front]
    ax.step(fx, fy, where="post", c="0.4", lw=1, ls="--", label="Pareto front", zorder=2)
    xl = _axis_scale(ax, "x", [p[0] for p in xy], "ms")
    ax.set_xlabel(f"p50 latency, batch 1 ({xl}); hollow: noisy")
    ax.set_ylabel("top-1 (%)")
    ax.grid(True, which="major", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    _legend(ax, handles + _run_handles(runs), loc="best")
    return fig


def fig_size_accuracy(rows: list[dict], context: str = ""):
    """Artifact size (MB) against top-1, one point per target (its colour)."""
    plt = _plt()
    multi = _multi_run(rows)
    runs = list(dict.fromkeys(r.get("run") for r in rows)) if multi else []
    pts = [
        r
        for r in rows
        if r.get("status") == "ok" and r.get("size_mb") and r.get("top1") is not None
    ]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _title(ax, "Size against accuracy", context)
    if not pts:
        _no_data(ax, "targets with both size and top-1")
        return fig
    seen = set()
    for r in pts:
        ax.scatter(
            r["size_mb"],
            r["top1"],
            s=55,
            marker=_run_marker(r, runs),
            c=target_color(r["target"]),
            zorder=3,
            label=None if r["target"] in seen else r["target"],
        )
        seen.add(r["target"])
    xl = _axis_scale(ax, "x", [r["size_mb"] for r in pts], "MB")
    ax.set_xlabel(f"artifact size ({xl})")
    ax.set_ylabel("top-1 (%)")
    ax.grid(True, which="major", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    _legend(ax, handles + _run_handles(runs), loc="best")
    return fig


def fig_latency_distribution(rows: list[dict], context: str = ""):
    """Box plot of the batch-1 latency samples of every target (p1..p99 whiskers),
    boxes in the targets' colours; noisy rows marked in their label."""
    plt = _plt()
    multi = _multi_run(rows)
    data = [r for r in rows if r.get("status") == "ok" and r.get("latency_samples_ms")]
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * max(len(data), 3) + 1.8))
    _title(ax, "Latency distribution (batch 1)", context)
    if not data:
        _no_data(ax, "latency samples")
        return fig
    kw = {
        "whis": (1, 99),
        "showfliers": True,
        "flierprops": {"markersize": 2, "alpha": 0.4},
        "patch_artist": True,
    }
    series = [r["latency_samples_ms"] for r in data]
    try:  # matplotlib >= 3.10
        bp = ax.boxplot(series, orientation="horizontal", **kw)
    except TypeError:
        bp = ax.boxplot(series, vert=False, **kw)
    for box, r in zip(bp["boxes"], data, strict=True):
        box.set_facecolor(target_color(r["target"]))
        box.set_alpha(0.7)
    names = [row_name(r, multi) + ("  (noisy)" if r.get("noisy") else "") for r in data]
    ax.set_yticks(range(1, len(data) + 1), names, fontsize=8)
    xl = _axis_scale(ax, "x", [v for s in series for v in s], "ms")
    ax.set_xlabel(f"latency per query ({xl}); whiskers p1..p99")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    return fig


def fig_throughput(rows: list[dict], context: str = ""):
    """Images per second against batch size, one line per target (its colour); the
    x ticks are the measured batch sizes only."""
    plt = _plt()
    multi = _multi_run(rows)
    runs = list(dict.fromkeys(r.get("run") for r in rows)) if multi else []
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _title(ax, "Throughput against batch size", context)
    sizes: set[int] = set()
    ys: list[float] = []
    for r in rows:
        thr = {int(k): v for k, v in (r.get("throughput_ips") or {}).items() if v}
        if r.get("status") != "ok" or not thr:
            continue
        bs = sorted(thr)
        sizes.update(bs)
        ys += [thr[b] for b in bs]
        ax.plot(
            bs,
            [thr[b] for b in bs],
            marker=_run_marker(r, runs),
            c=target_color(r["target"]),
            label=row_name(r, multi),
        )
    if not sizes:
        _no_data(ax, "throughput figures")
        return fig
    from matplotlib.ticker import NullLocator

    if len(sizes) > 1 and max(sizes) / min(sizes) > 4:
        ax.set_xscale("log", base=2)
        xl = "log scale"
    else:
        xl = "linear"
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(sorted(sizes), [str(b) for b in sorted(sizes)])
    yl = _axis_scale(ax, "y", ys, "images/s")
    ax.set_xlabel(f"batch size ({xl}; ticks: the measured sizes)")
    ax.set_ylabel(yl.replace("images/s, ", "images/s (") + (")" if "log" in yl else ""))
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, loc="best")
    return fig


def plot_accuracy_latency(rows: list[dict], path: Path, force: bool = True, context="") -> Path:
    """:func:`fig_accuracy_latency` written as a PNG."""
    return _save(fig_accuracy_latency(rows, context), path, force)


def plot_size_accuracy(rows: list[dict], path: Path, force: bool = True, context="") -> Path:
    """:func:`fig_size_accuracy` written as a PNG."""
    return _save(fig_size_accuracy(rows, context), path, force)


def plot_latency_distribution(rows: list[dict], path: Path, force: bool = True, context="") -> Path:
    """:func:`fig_latency_distribution` written as a PNG."""
    return _save(fig_latency_distribution(rows, context), path, force)


def plot_throughput(rows: list[dict], path: Path, force: bool = True, context="") -> Path:
    """:func:`fig_throughput` written as a PNG."""
    return _save(fig_throughput(rows, context), path, force)


def confusion_matrix(labels, predictions, num_classes: int | None = None):
    """Counts int64 [C, C]: row = true class, column = predicted class."""
    import numpy as np

    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} predictions")
    c = int(num_classes or max(y.max(initial=0), p.max(initial=0)) + 1)
    return np.bincount(y * c + p, minlength=c * c).reshape(c, c)


def fig_confusion(r: dict, labels, multi: bool = False, classes=None, context: str = ""):
    """One target's confusion matrix, from its predictions and the test ``labels``."""
    import numpy as np

    plt = _plt()
    cm = confusion_matrix(labels, r["predictions"], len(classes) if classes else None)
    c = cm.shape[0]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * c + 2.5), max(4, 0.45 * c + 2)))
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
    _title(ax, f"{row_name(r, multi)}: top-1 {acc:.2f}% on {int(cm.sum())} images", context)
    return fig


def plot_confusion(
    r: dict,
    labels,
    path: Path,
    force: bool = True,
    multi: bool = False,
    classes=None,
    context: str = "",
) -> Path:
    """:func:`fig_confusion` written as a PNG."""
    return _save(fig_confusion(r, labels, multi, classes, context), path, force)


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "target"


PLOTS = {
    "accuracy_vs_latency.png": plot_accuracy_latency,
    "size_vs_accuracy.png": plot_size_accuracy,
    "latency_distribution.png": plot_latency_distribution,
    "throughput_vs_batch.png": plot_throughput,
}

#: The figure behind each file of :data:`PLOTS`: ``fn(rows, context) -> Figure``.
FIGURES = {
    "accuracy_vs_latency.png": fig_accuracy_latency,
    "size_vs_accuracy.png": fig_size_accuracy,
    "latency_distribution.png": fig_latency_distribution,
    "throughput_vs_batch.png": fig_throughput,
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
    context = plot_context(report)
    for name, fn in PLOTS.items():
        written.append(fn(rows, out / name, force=force, context=context))
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
                        context=plot_context(
                            {"environment": run.get("environment"), "meta": run.get("meta")}
                        ),
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
