"""``edgekit sweep``: the accuracy/latency/size trade-off over pruning ratios.

For each ratio: prune the workspace's model (or the given one), fine-tune, then
export, lower and benchmark it on the chosen targets with :func:`edgekit.pipeline.run`
(ratio 0 is the unpruned reference). One report: ``WORK/sweep.json`` (all rows),
``WORK/sweep.md`` (a table) and ``WORK/sweep.png`` (top-1 vs pruning ratio and vs
p50 latency, one line per target).
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError


def sweep(
    spec,
    work: Path,
    ratios: list[float],
    *,
    targets: list[str] | None = None,
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

    Raises:
        EdgekitError: no ratios, or a ratio outside [0, 1).
    """
    import copy
    import json

    from edgekit.fileio import atomic_path, write_json
    from edgekit.pipeline import run

    if not ratios:
        raise EdgekitError("--ratios is empty", "e.g. --ratios 0,0.3,0.5,0.7")
    for r in ratios:
        if not 0 <= r < 1:
            raise EdgekitError(f"pruning ratio {r} is outside [0, 1)")
    work = Path(work)
    ratios = sorted(set(ratios))
    if spec.weights is None and ratios[0] != 0:
        # the base model is trained once, in r0, and every ratio prunes that same model
        ratios = [0.0, *ratios]
    all_rows = []
    base_weights = spec.weights
    base_stats = None
    for r in ratios:
        s = copy.deepcopy(spec)
        s.prune_ratio = r or None
        s.weights = base_weights
        sub = work / f"r{r:g}"
        log(f"== pruning ratio {r:g} -> {sub}")
        rows = run(s, sub, targets=targets, cfg=cfg, threads=threads, force=force, log=log)
        if base_weights is None:
            base_weights = str(sub / "model.pt")  # trained here, unpruned (r == 0)
        rec = json.loads((sub / "edgekit.json").read_text())
        pr = rec.get("pruning") or {}
        after = pr.get("after", {})
        base_stats = base_stats or pr.get("before")
        for row in rows:
            row.update(pruning_ratio=r, macs=after.get("macs"), params=after.get("params"))
        all_rows.extend(rows)
    for row in all_rows:  # the unpruned rows carry the base model's statistics
        if row["pruning_ratio"] == 0 and base_stats:
            row.update(macs=base_stats["macs"], params=base_stats["params"])
    write_json(work / "sweep.json", all_rows)
    with atomic_path(work / "sweep.md", force=True) as tmp:  # replaces a link, never follows it
        tmp.write_text(markdown_table(all_rows))
    from edgekit.harness import environment
    from edgekit.report import plot_context

    env = environment(threads)
    meta = {"model": spec.model or "default model", "dataset": spec.dataset}
    plot_sweep(all_rows, work / "sweep.png", plot_context({"environment": env, "meta": meta}))
    return all_rows


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
