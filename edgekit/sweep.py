"""``edgekit sweep``: the accuracy/latency/size trade-off over pruning ratios.

For each ratio: prune the workspace's model (or the given one), fine-tune, then
export, lower and benchmark it on the chosen targets with :func:`edgekit.pipeline.run`
(ratio 0 is the unpruned reference). One report: ``WORK/sweep.json`` (all rows),
``WORK/sweep.md`` (a table) and ``WORK/sweep.png`` (top-1 vs pruning ratio and vs
p50 latency, one line per target). The report is rewritten after every ratio
and a re-run of the same command resumes from it (``WORK/sweep-state.json``).

With ``techniques`` (:mod:`edgekit.compress` names, e.g. ``lowrank``) the ratios are
each technique's levels (for ``lowrank`` the fraction of MACs removed); ``channel``
(the default) is channel pruning as before. Every row has a ``technique`` (``none``
for the uncompressed reference at ratio 0). Directories: ``WORK/r0`` (the reference),
``WORK/rR`` for ``channel``, ``WORK/TECH-rR`` for another technique (the name
sanitised for a file name, ``2:4`` -> ``2-4``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgekit.errors import EdgekitError

#: The sweep's resume record, beside ``sweep.json``.
STATE = "sweep-state.json"


#: the ``technique`` of the rows of the uncompressed reference (ratio 0)
REFERENCE = "none"


def safe_name(technique: str) -> str:
    """A technique name usable in a file name: anything but ``[A-Za-z0-9._]`` becomes ``-``."""
    return re.sub(r"[^A-Za-z0-9._]", "-", technique)


def _key(technique: str | None, r: float):
    """A job's entry in the resume record: the ratio for the reference and ``channel``
    (the record of sweeps made before techniques existed), ``"TECH:R"`` otherwise."""
    if r == 0 or technique in (None, "channel", REFERENCE):
        return float(r)
    return f"{technique}:{r:g}"


def _subdir(work: Path, technique: str, r: float) -> Path:
    if r == 0 or technique == "channel":
        return work / f"r{r:g}"
    return work / f"{safe_name(technique)}-r{r:g}"


def _fingerprint(spec, targets, target_files, cfg, threads, techniques=("channel",)) -> dict:
    """What decides a ratio's rows: a resumed sweep must have been asked the same."""
    from dataclasses import asdict

    skip = {"module", "prune_ratio", "technique"}
    if not spec.compress_options:  # the fingerprint of sweeps made before techniques existed
        skip.add("compress_options")
    d = {k: v for k, v in asdict(spec).items() if k not in skip}
    extra = {} if list(techniques) == ["channel"] else {"techniques": list(techniques)}
    return json.loads(
        json.dumps(
            {
                **extra,
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


def _failed_row(r: float, e: BaseException, technique: str = "channel") -> dict:
    reason = (
        str(e)
        if isinstance(e, EdgekitError)
        else f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    )
    return {
        "target": "-",
        "status": "failed",
        "reason": reason,
        "technique": technique if r else REFERENCE,
        "pruning_ratio": r,
        "top1": None,
        "latency_ms": None,
        "size_mb": None,
        "macs": None,
        "params": None,
    }


def check_techniques(techniques: list[str], ratios: list[float], options: dict) -> None:
    """Check every technique name and every nonzero ratio as its level, before any work.

    Raises:
        EdgekitError: an unknown technique, a repeated one, or a level it refuses.
    """
    from edgekit.compress import get_technique

    if len(set(techniques)) != len(techniques):
        raise EdgekitError(f"--technique names a technique twice: {','.join(techniques)}")
    for t in techniques:
        tech = get_technique(t)
        if t == "channel":
            continue  # edgekit.prune's path: ratios in [0, 1), checked by sweep
        for r in ratios:
            if r:
                tech.check(r, dict(options))


def sweep(
    spec,
    work: Path,
    ratios: list[float],
    *,
    techniques: list[str] | None = None,
    targets: list[str] | None = None,
    target_files=None,
    cfg=None,
    threads: int | None = None,
    force: bool = False,
    log=print,
) -> list[dict]:
    """Run the pipeline once per technique and ratio into ``WORK/...``; returns all rows.

    ``spec`` is an :class:`edgekit.pipeline.ModelSpec`; its ``prune_options`` apply to
    every ratio (for techniques other than ``channel``: only the fine-tuning keys), its
    ``compress_options`` to every level of the other techniques. ``techniques``:
    :mod:`edgekit.compress` names (default ``[spec.technique]``, i.e. ``channel``); each
    nonzero ratio is run once per technique, ratio 0 (the uncompressed reference) once.
    Without ``spec.weights`` the model is trained once, in ``WORK/r0`` (ratio 0 is added
    when missing), and every other ratio compresses that checkpoint, so all ratios start
    from the same weights. Each row gains ``technique``, ``pruning_ratio`` (the level),
    ``macs`` and ``params``.

    The report (``sweep.json``/``.md``/``.png``) and ``WORK/sweep-state.json`` are
    written after every ratio. Run again with the same options, the sweep resumes:
    finished ratios (failed ones included) are skipped and their rows kept; a ratio
    cut short is redone. ``force`` redoes every ratio. A ratio that fails (e.g. it
    empties a layer) becomes a ``failed`` row and the sweep goes on.

    Raises:
        EdgekitError: no ratios, a ratio outside [0, 1), an unknown target or technique,
            a level a technique refuses, ``work`` that is a file, or a sweep in ``work``
            made with other options (without ``force``); all before anything is written.
    """
    import copy

    from edgekit.pipeline import run

    if not ratios:
        raise EdgekitError("--ratios is empty", "e.g. --ratios 0,0.3,0.5,0.7")
    for r in ratios:
        if not 0 <= r < 1:  # NaN too
            raise EdgekitError(f"pruning ratio {r} is outside [0, 1)", "e.g. --ratios 0,0.3,0.5")
    techniques = list(techniques or [spec.technique])
    if not techniques:
        raise EdgekitError("--technique is empty", "e.g. --technique lowrank")
    check_techniques(techniques, ratios, spec.compress_options)
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
    jobs = [(REFERENCE, 0.0)] if ratios[0] == 0 else []
    jobs += [(t, r) for t in techniques for r in ratios if r != 0]
    fp = _fingerprint(spec, targets, target_files, cfg, threads, techniques)
    state = None if force else _read_state(work)
    if state is not None and state.get("fingerprint") != fp:
        raise EdgekitError(
            f"{work} holds a sweep made with other options; it cannot be resumed with these",
            "pass --force to start over, or choose another --work-dir",
        )
    done = {d if isinstance(d, str) else float(d) for d in (state or {}).get("done", [])}
    kept = [
        r
        for r in (state or {}).get("rows", [])
        if _key(r.get("technique"), r.get("pruning_ratio")) in done
    ]
    base_stats = (state or {}).get("base_stats")
    skip = [(t, r) for t, r in jobs if _key(t, r) in done]
    if skip:
        log(
            f"resuming the sweep in {work}: ratio(s) "
            f"{', '.join(_label(t, r, techniques) for t, r in skip)} "
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
    for t, r in jobs:
        if _key(t, r) in done:
            continue
        s = copy.deepcopy(spec)
        s.prune_ratio = r or None
        s.technique = "channel" if t == REFERENCE else t
        s.weights = base_weights
        sub = _subdir(work, t, r)
        log(f"== {'pruning ratio' if t in ('channel', REFERENCE) else t} {r:g} -> {sub}")
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
            log(f"ratio {_label(t, r, techniques)}: failed: {e}")
            rows = [_failed_row(r, e, t)]
            rec = {}
        except Exception as e:  # a bug in one ratio must not lose the others
            log(f"ratio {_label(t, r, techniques)}: failed: {type(e).__name__}: {e}")
            rows = [_failed_row(r, e, t)]
            rec = {}
        if base_weights is None and r == 0 and (sub / "model.pt").is_file():
            base_weights = str(sub / "model.pt")  # trained here, unpruned (r == 0)
        pr = (rec.get("pruning") or rec.get("compression") or {}) if r else {}
        after = pr.get("after", {})
        base_stats = base_stats or pr.get("before")
        for row in rows:
            row.setdefault("pruning_ratio", r)
            row["technique"] = t if r else REFERENCE
            if row.get("status") != "failed" or row.get("target") != "-":
                row.update(pruning_ratio=r, macs=after.get("macs"), params=after.get("params"))
        all_rows.extend(rows)
        done.add(_key(t, r))
        _write(work, all_rows, base_stats, fp, done, context)
        resuming = True
    _write(work, all_rows, base_stats, fp, done, context)
    return all_rows


def _label(technique: str, r: float, techniques: list[str]) -> str:
    """``0.5`` in a channel-only sweep, ``lowrank 0.5`` when techniques are mixed."""
    if r == 0 or techniques == ["channel"]:
        return f"{r:g}"
    return f"{technique} {r:g}"


def _write(
    work: Path, rows: list[dict], base_stats, fp: dict, done: set, context: str = ""
) -> None:
    """The report so far and the resume record (each written atomically)."""
    from edgekit.fileio import atomic_path, write_json

    for row in rows:  # rows of sweeps made before techniques existed
        row.setdefault("technique", REFERENCE if row["pruning_ratio"] == 0 else "channel")
    rows.sort(key=_order)
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
            "done": sorted(d for d in done if not isinstance(d, str))
            + sorted(d for d in done if isinstance(d, str)),
            "base_stats": base_stats,
        },
    )


def _order(row: dict):
    """The reference first, then ``channel``, then other techniques by name; by ratio."""
    t = row.get("technique") or "channel"
    return (t != REFERENCE, t != "channel", t, row["pruning_ratio"])


def markdown_table(rows: list[dict]) -> str:
    """Technique, ratio (the technique's level), target, status, top-1, p50/p90 latency
    (ms), size (MB), MACs."""

    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    lines = [
        "| technique | ratio | target | status | top-1 % | p50 ms | p90 ms | size MB | MACs (M) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        macs = r.get("macs")
        tech = r.get("technique") or ("none" if r["pruning_ratio"] == 0 else "channel")
        lines.append(
            f"| {tech} | {r['pruning_ratio']:g} | {r.get('target')} | {r.get('status')} | "
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
    techs = sorted({r.get("technique") or "channel" for r in rows} - {REFERENCE}) or ["channel"]
    styles = ["o-", "s--", "^:", "d-.", "v-", "x--"]
    for t, tech, style in (
        (t, tech, styles[i % len(styles)])
        for t in sorted({r.get("target") for r in rows})
        for i, tech in enumerate(techs)
    ):
        pts = [
            r
            for r in rows
            if r.get("target") == t
            and r.get("top1") is not None
            and (r.get("technique") or "channel") in (tech, REFERENCE)
        ]
        if not pts:
            continue
        c = target_color(t)
        label = t if len(techs) == 1 else f"{t}, {tech}"
        pts.sort(key=lambda r: r["pruning_ratio"])
        ax[0].plot(
            [r["pruning_ratio"] for r in pts], [r["top1"] for r in pts], style, c=c, label=label
        )
        lat = [r for r in pts if (r.get("latency_ms") or {}).get("p50") is not None]
        lat.sort(key=lambda r: r["latency_ms"]["p50"])  # joined in x order, never zig-zag
        xs = [r["latency_ms"]["p50"] for r in lat]
        lat_all += xs
        ax[1].plot(xs, [r["top1"] for r in lat], style, c=c, label=label)
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
    what = "pruning ratio" if techs == ["channel"] else "level"
    ax[0].set(xlabel=what if what != "level" else "level (channel: ratio; lowrank: MACs removed)")
    ax[0].set(ylabel="top-1 (%)")
    ax[1].set(xlabel=f"p50 latency, batch 1 ({xl}); labels: {what}", ylabel="top-1 (%)")
    ax[0].set_title(f"top-1 against {what}", fontsize=9)
    ax[1].set_title("top-1 against latency", fontsize=9)
    for a in ax:
        a.grid(True, alpha=0.3)
    ax[0].legend(fontsize=7)
    title = "Pruning sweep" if techs == ["channel"] else f"Compression sweep: {', '.join(techs)}"
    fig.suptitle(f"{title}\n{context}" if context else title, fontsize=9)
    fig.tight_layout()
    return fig
