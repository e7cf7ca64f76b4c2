"""``edgekit sweep``: the accuracy/latency/size trade-off over pruning ratios.

For each ratio: prune the workspace's model (or the given one), fine-tune, then
export, lower and benchmark it on the chosen targets with :func:`edgekit.pipeline.run`
(ratio 0 is the unpruned reference). One report: ``WORK/sweep.json`` (all rows),
``WORK/sweep.md`` (a table) and ``WORK/sweep.png`` (top-1 vs pruning ratio and vs
p50 latency, one line per target). The report is rewritten after every ratio
and a re-run of the same command resumes from it (``WORK/sweep-state.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.errors import EdgekitError

#: The sweep's resume record, beside ``sweep.json``.
STATE = "sweep-state.json"


def _fingerprint(spec, targets, target_files, cfg, threads) -> dict:
    """What decides a ratio's rows: a resumed sweep must have been asked the same."""
    from dataclasses import asdict

    d = {k: v for k, v in asdict(spec).items() if k not in ("module", "prune_ratio")}
    return json.loads(
        json.dumps(
            {
                "spec": d,
                "targets": targets,
                "target_files": [str(Path(f).absolute()) for f in target_files or []],
                "config": cfg.to_dict() if cfg is not None else None,
                "threads": threads,
            },
            sort_keys=True,
            default=str,
        )
    )


def _read_state(work: Path) -> dict | None:
    p = work / STATE
    if not p.is_file():
        return None
    try:
        st = json.loads(p.read_text())
        rows = json.loads((work / "sweep.json").read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise EdgekitError(
            f"cannot resume the sweep in {work}: {e}", "pass --force to start over"
        ) from None
    if not isinstance(st, dict) or not isinstance(rows, list) or "done" not in st:
        raise EdgekitError(f"{p} is not an edgekit sweep record", "pass --force to start over")
    st["rows"] = [r for r in rows if isinstance(r, dict)]
    return st


def _failed_row(r: float, e: BaseException) -> dict:
    reason = (
        str(e)
        if isinstance(e, EdgekitError)
        else f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    )
    return {
        "target": "-",
        "status": "failed",
        "reason": reason,
        "pruning_ratio": r,
        "top1": None,
        "latency_ms": None,
        "size_mb": None,
        "macs": None,
        "params": None,
    }


def sweep(
    spec,
    work: Path,
    ratios: list[float],
    *,
    targets: list[str] | None = None,
    target_files=None,
    cfg=None,
    threads: int | None = None,
    force: bool = False,
    log=print,
) -> list[dict]:
    """Run the pipeline once per ratio into ``WORK/r{ratio}``; returns all rows.

    ``spec`` is an :class:`edgekit.pipeline.ModelSpec`; its ``prune_options`` apply to
    every ratio. Without ``spec.weights`` the model is trained once, in ``WORK/r0``
    (ratio 0 is added when missing), and every other ratio prunes that checkpoint, so
    all ratios start from the same weights. Each row gains ``pruning_ratio``, ``macs``
    and ``params``.

    The report (``sweep.json``/``.md``/``.png``) and ``WORK/sweep-state.json`` are
    written after every ratio. Run again with the same options, the sweep resumes:
    finished ratios (failed ones included) are skipped and their rows kept; a ratio
    cut short is redone. ``force`` redoes every ratio. A ratio that fails (e.g. it
    empties a layer) becomes a ``failed`` row and the sweep goes on.

    Raises:
        EdgekitError: no ratios, a ratio outside [0, 1), an unknown target, ``work``
            that is a file, or a sweep in ``work`` made with other options (without
            ``force``); all before anything is written.
    """
    import copy

    from edgekit.pipeline import run

    if not ratios:
        raise EdgekitError("--ratios is empty", "e.g. --ratios 0,0.3,0.5,0.7")
    for r in ratios:
        if not 0 <= r < 1:  # NaN too
            raise EdgekitError(f"pruning ratio {r} is outside [0, 1)", "e.g. --ratios 0,0.3,0.5")
    if targets:
        from edgekit.api import check_target_names

        check_target_names(targets, target_files)
    work = Path(work)
    if work.exists() and not work.is_dir():
        raise EdgekitError(f"{work} exists and is not a directory")
    ratios = sorted(set(ratios))
    if spec.weights is None and ratios[0] != 0:
        # the base model is trained once, in r0, and every ratio prunes that same model
        ratios = [0.0, *ratios]
    fp = _fingerprint(spec, targets, target_files, cfg, threads)
    state = None if force else _read_state(work)
    if state is not None and state.get("fingerprint") != fp:
        raise EdgekitError(
            f"{work} holds a sweep made with other options; it cannot be resumed with these",
            "pass --force to start over, or choose another --work-dir",
        )
    done = {float(r) for r in (state or {}).get("done", [])}
    kept = [r for r in (state or {}).get("rows", []) if r.get("pruning_ratio") in done]
    base_stats = (state or {}).get("base_stats")
    skip = [r for r in ratios if r in done]
    if skip:
        log(
            f"resuming the sweep in {work}: ratio(s) {', '.join(f'{r:g}' for r in skip)} "
            f"already done (rows kept from {work / 'sweep.json'}); pass --force to redo them"
        )
    all_rows = list(kept)
    base_weights = spec.weights
    if base_weights is None and 0.0 in done and (work / "r0" / "model.pt").is_file():
        base_weights = str(work / "r0" / "model.pt")
    resuming = state is not None
    from edgekit.harness import environment
    from edgekit.report import plot_context

    meta = {"model": spec.model or "default model", "dataset": spec.dataset}
    context = plot_context({"environment": environment(threads), "meta": meta})
    for r in ratios:
        if r in done:
            continue
        s = copy.deepcopy(spec)
        s.prune_ratio = r or None
        s.weights = base_weights
        sub = work / f"r{r:g}"
        log(f"== pruning ratio {r:g} -> {sub}")
        try:
            if s.weights is None and r != 0:
                raise EdgekitError("the base model (ratio 0) was not trained", "see its row")
            rows = run(
                s,
                sub,
                targets=targets,
                target_files=target_files,
                cfg=cfg,
                threads=threads,
                # a resumed sweep redoes a ratio it cut short, in its own directory
                force=force or resuming,
                log=log,
            )
            rec = json.loads((sub / "edgekit.json").read_text())
        except EdgekitError as e:
            log(f"ratio {r:g}: failed: {e}")
            rows = [_failed_row(r, e)]
            rec = {}
        except Exception as e:  # a bug in one ratio must not lose the others
            log(f"ratio {r:g}: failed: {type(e).__name__}: {e}")
            rows = [_failed_row(r, e)]
            rec = {}
        if base_weights is None and r == 0 and (sub / "model.pt").is_file():
            base_weights = str(sub / "model.pt")  # trained here, unpruned (r == 0)
        pr = rec.get("pruning") or {}
        after = pr.get("after", {})
        base_stats = base_stats or pr.get("before")
        for row in rows:
            row.setdefault("pruning_ratio", r)
            if row.get("status") != "failed" or row.get("target") != "-":
                row.update(pruning_ratio=r, macs=after.get("macs"), params=after.get("params"))
        all_rows.extend(rows)
        done.add(r)
        _write(work, all_rows, base_stats, fp, done, context)
        resuming = True
    _write(work, all_rows, base_stats, fp, done, context)
    return all_rows


def _write(
    work: Path, rows: list[dict], base_stats, fp: dict, done: set, context: str = ""
) -> None:
    """The report so far and the resume record (each written atomically)."""
    from edgekit.fileio import atomic_path, write_json

    rows.sort(key=lambda r: r["pruning_ratio"])
    for row in rows:  # the unpruned rows carry the base model's statistics
        if row["pruning_ratio"] == 0 and base_stats and row.get("status") == "ok":
            row.update(macs=base_stats["macs"], params=base_stats["params"])
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "sweep.json", rows)
    with atomic_path(work / "sweep.md", force=True) as tmp:  # replaces a link, never follows it
        tmp.write_text(markdown_table(rows))
    plot_sweep(rows, work / "sweep.png", context)
    write_json(
        work / STATE,
        {
            "schema": "edgekit-sweep-state/1",
            "fingerprint": fp,
            "done": sorted(done),
            "base_stats": base_stats,
        },
    )


def markdown_table(rows: list[dict]) -> str:
    """Ratio, target, status, top-1, p50/p90 latency (ms), size (MB), MACs."""

    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    lines = [
        "| ratio | target | status | top-1 % | p50 ms | p90 ms | size MB | MACs (M) |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        macs = r.get("macs")
        lines.append(
            f"| {r['pruning_ratio']:g} | {r.get('target')} | {r.get('status')} | "
            f"{f(r.get('top1'))} | {f((r.get('latency_ms') or {}).get('p50'), '.3f')} | {f((r.get('latency_ms') or {}).get('p90'), '.3f')} | "
            f"{f(r.get('size_mb'), '.3f')} | {f(macs / 1e6 if macs else None)} |"
        )
    return "\n".join(lines) + "\n"


def plot_sweep(rows: list[dict], path: Path, context: str = "") -> Path:
    """:func:`fig_sweep` written as a PNG."""
    from edgekit.fileio import atomic_path
    from edgekit.report import _plt

    fig = fig_sweep(rows, context)
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _plt().close(fig)
    return path


def fig_sweep(rows: list[dict], context: str = ""):
    """Two panels: top-1 against pruning ratio, and top-1 against p50 latency with each
    point labelled by its ratio and joined in latency order; one colour per target
    (:func:`edgekit.report.target_color`)."""
    from edgekit.report import _axis_scale, _plt, target_color

    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    lat_all = []
    for t in sorted({r.get("target") for r in rows}):
        pts = [r for r in rows if r.get("target") == t and r.get("top1") is not None]
        if not pts:
            continue
        c = target_color(t)
        pts.sort(key=lambda r: r["pruning_ratio"])
        ax[0].plot([r["pruning_ratio"] for r in pts], [r["top1"] for r in pts], "o-", c=c, label=t)
        lat = [r for r in pts if (r.get("latency_ms") or {}).get("p50") is not None]
        lat.sort(key=lambda r: r["latency_ms"]["p50"])  # joined in x order, never zig-zag
        xs = [r["latency_ms"]["p50"] for r in lat]
        lat_all += xs
        ax[1].plot(xs, [r["top1"] for r in lat], "o-", c=c, label=t)
        for r, x in zip(lat, xs, strict=True):
            ax[1].annotate(
                f"{r['pruning_ratio']:g}",
                (x, r["top1"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=c,
            )
    xl = _axis_scale(ax[1], "x", lat_all, "ms")
    ax[0].set(xlabel="pruning ratio", ylabel="top-1 (%)")
    ax[1].set(xlabel=f"p50 latency, batch 1 ({xl}); labels: pruning ratio", ylabel="top-1 (%)")
    ax[0].set_title("top-1 against pruning ratio", fontsize=9)
    ax[1].set_title("top-1 against latency", fontsize=9)
    for a in ax:
        a.grid(True, alpha=0.3)
    ax[0].legend(fontsize=7)
    fig.suptitle(f"Pruning sweep\n{context}" if context else "Pruning sweep", fontsize=9)
    fig.tight_layout()
    return fig
