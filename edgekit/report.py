"""Reports: the terminal table (rich) and the JSON file with every figure."""

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
    ]:
        t.add_column(col, justify=just)
    for r in rows:
        lat = r.get("latency_ms") or {}
        thr = r.get("throughput_ips") or {}
        best = max((v for v in thr.values() if v), default=None)
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
        t.add_row(
            r["target"],
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
        )
    return t


def print_table(rows: list[dict], title: str = "edgekit benchmark", console=None) -> None:
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a log file: don't squeeze the table to 80 columns
            console = Console(width=160)
    console.print(table(rows, title))


def write_report(
    path: str | Path, rows: list[dict], environment: dict, config: dict, meta: dict | None = None
) -> Path:
    """Write the JSON report (atomically)."""
    return write_json(
        path,
        {
            "schema": REPORT_SCHEMA,
            "environment": environment,
            "config": config,
            "meta": meta or {},
            "rows": rows,
        },
    )
