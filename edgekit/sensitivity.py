"""ONNX Runtime INT8 under accuracy control: ``edgekit sensitivity`` and ``max_drop``.

Wires :mod:`edgekit.accuracy_control` to ONNX Runtime's static quantizer. The
quantizer is passed in (``build_int8`` of :mod:`edgekit.backends.onnxruntime`), which
calibrates once: the ranges go to an ONNX Runtime calibration cache
(``quantize_static(calibration_cache_path=...)``) and every later variant (a different
``nodes_to_exclude``) is quantized from that cache, so all variants share the same
activation ranges and the final artifact is bit-identical, but for its stripped
names, to the variant measured on the validation slice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from edgekit.accuracy_control import (
    Evaluator,
    activation_sqnr,
    candidate_nodes,
    check_max_drop,
    dependency_groups,
    fallback_search,
    fallback_set,
    latency_ratios,
    logits,
    rank_groups,
    session,
    temp_work,
)
from edgekit.errors import EdgekitError

#: Calibration images used for the activation SQNR (a subset of the calibration set).
SQNR_IMAGES = 64


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def op_types_of(opts: dict) -> set[str]:
    """The op types ``quantize_static`` quantizes for these target options."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(opts["op_types_to_quantize"]) or (set(QDQRegistry) | set(QLinearOpsRegistry))


def pre_processed(onnx_path: Path, out: Path, optimize: bool = True, where: str = ""):
    """``quant_pre_process`` of the FP32 model, as ``build_int8`` runs it (same node names;
    ``optimize`` is the target's ``pre_process_optimize``).

    Returns:
        The loaded ``onnx.ModelProto``.

    Raises:
        EdgekitError: as :func:`edgekit.qdq.quant_pre_process_checked`.
    """
    import onnx

    from edgekit.qdq import quant_pre_process_checked

    return onnx.load(str(quant_pre_process_checked(onnx_path, out, optimize=optimize, where=where)))


def ort_quantizer(ctx, opts: dict, where: str, build_int8, cache: Path):
    """A ``quantize(fp32_nodes, out_dir) -> model path`` over ``build_int8``.

    Names are kept (``strip_names`` off) so that nodes can be matched; all calls share
    the calibration cache ``cache`` (written by the first).
    """

    def quantize(fp32_nodes: list[str], out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        o = {**opts, "nodes_to_exclude": list(fp32_nodes), "strip_names": False, "max_drop": None}
        build_int8(ctx, o, out_dir, where=where, calib_cache=cache)
        return out_dir / "model.onnx"

    return quantize


def validation_slice(ctx, images: int, calib_per_class: int, where: str):
    """:meth:`BuildContext.validation_set`, the error naming the target and the count needed."""
    try:
        return ctx.validation_set(images, calib_per_class)
    except EdgekitError as e:
        raise EdgekitError(
            f"{where}: the validation slice needs {images:,} training images not used for "
            f"calibration: {e.message}",
            "give a dataset with more training images, or a larger max_drop",
        ) from None


def build_with_max_drop(ctx, opts: dict, out_dir: Path, where: str, build_int8):
    """``ort-cpu-int8`` with ``max_drop``: the greedy FP32 fallback, then the artifact.

    Validates ``max_drop`` and the slice size first (:func:`check_max_drop`), draws the
    validation slice from the training split (disjoint from the calibration images;
    never the test split), runs :func:`edgekit.accuracy_control.fallback_search`, measures
    the batch-1 p50 latency of every step against full INT8 in the same run, and builds
    the artifact with the chosen nodes in FP32.

    Returns:
        ``build_int8``'s BuildResult, with ``extra["quantization"]["accuracy_control"]``:
        ``max_drop``, ``metric``, the slice record, FP32/INT8/final top-1 on it, the drop
        reached, the FP32 nodes added, the number of quantizable nodes, and per step the
        nodes added, top-1, drop and p50 latency ratio vs full INT8.

    Raises:
        EdgekitError: bad ``max_drop``, a slice too small (with the count needed).
        AccuracyNotMetError: the limit cannot be met (exit status 1).
    """
    n = check_max_drop(opts["max_drop"], opts["validation_images"], where)
    xv, yv, vrec = validation_slice(ctx, n, opts["calib_per_class"], where)
    with temp_work() as td:
        td = Path(td)
        model = pre_processed(
            ctx.onnx_path, td / "pre.onnx", opts.get("pre_process_optimize", True), where
        )
        types = op_types_of(opts)
        cands = candidate_nodes(model, types)
        ev = Evaluator(xv, yv, logits(session(ctx.onnx_path), xv))
        cache = td / "calibration.json"
        quantize = ort_quantizer(ctx, opts, where, build_int8, cache)
        res = fallback_search(
            model,
            types,
            quantize,
            ev,
            float(opts["max_drop"]),
            td,
            user_exclude=list(opts["nodes_to_exclude"]),
            where=where,
        )
        lat = latency_ratios(res.step_paths, xv[:1])
        final_opts = {
            **opts,
            "nodes_to_exclude": [*opts["nodes_to_exclude"], *res.fp32_nodes],
            "max_drop": None,
        }
        out = build_int8(ctx, final_opts, out_dir, where=where, calib_cache=cache)
    steps = []
    for s, lt in zip(res.steps, lat, strict=False):
        steps.append({**s, "latency_p50_ratio": lt["ratio"], "latency_ratio_range": [
            lt["ratio_min"], lt["ratio_max"]]})  # fmt: skip
    out.extra["quantization"]["accuracy_control"] = {
        "algorithm": "greedy FP32 fallback by sensitivity rank (OpenVINO accuracy-aware)",
        "metric": "top-1",
        "max_drop": float(opts["max_drop"]),
        "validation": vrec,
        "fp32_top1": round(res.fp32_top1, 4),
        "int8_top1": res.steps[0]["top1"],
        "top1": round(res.top1, 4),
        "drop": round(res.drop, 4),
        "fp32_nodes_added": list(res.fp32_nodes),
        "fp32_compute_nodes": [n for n in res.fp32_nodes if n in set(cands)],
        "quantizable_nodes": len(cands),
        "evaluations": ev.evaluations,
        "steps": steps,
        "latency": "batch 1, 1 thread, p50 ratio vs full INT8 in the same run (interleaved)",
        "ranking": [g.to_dict() for g in res.ranking[: max(len(steps) + 4, 8)]],
    }
    if res.fp32_top1 >= 99.5:
        note = (
            f"the FP32 model fits the training split (top-1 {res.fp32_top1:.2f}% on the "
            "validation slice): the drop measured there can be smaller than on unseen "
            "images; check the test-set drop with edgekit bench"
        )
        out.extra["quantization"]["accuracy_control"]["note"] = note
        _stderr(f"warning: {where}: {note}")
    return out


def sensitivity_report(ctx, opts: dict, where: str, build_int8, images: int, log=_stderr):
    """Per dependency group: top-1 gained when kept alone in FP32, and output SQNR.

    Top-1 is measured on ``images`` validation images of the training split (disjoint
    from the calibration images); the SQNR on the first :data:`SQNR_IMAGES` calibration
    images (:func:`edgekit.accuracy_control.activation_sqnr`).

    Returns:
        A JSON-able dict: ``target``, ``fp32_top1``, ``int8_top1``, ``validation``,
        ``quantizable_nodes``, ``groups`` (ranked, most sensitive first).
    """
    xv, yv, vrec = validation_slice(ctx, images, opts["calib_per_class"], where)
    xc, _, _ = ctx.calibration_for(where, opts["calib_per_class"])
    with temp_work() as td:
        td = Path(td)
        model = pre_processed(
            ctx.onnx_path, td / "pre.onnx", opts.get("pre_process_optimize", True), where
        )
        types = op_types_of(opts)
        user = list(opts["nodes_to_exclude"])
        cands = candidate_nodes(model, types, user)
        if not cands:
            raise EdgekitError(f"{where}: the model has no node that ONNX Runtime quantizes")
        groups = dependency_groups(model, cands)
        sets = [fallback_set(model, g, types) for g in groups]
        op_type = {n.name: n.op_type for n in model.graph.node}
        ev = Evaluator(xv, yv, logits(session(ctx.onnx_path), xv))
        quantize = ort_quantizer(ctx, opts, where, build_int8, td / "calibration.json")
        log(f"{where}: calibrating and quantizing ({len(cands)} quantizable nodes)")
        full = quantize(user, td / "int8")
        t1, mse = ev(full)
        log(f"{where}: FP32 {ev.fp32_top1:.2f}%, INT8 {t1:.2f}% on {len(yv)} validation images")
        sq = activation_sqnr(td / "pre.onnx", full, xc[:SQNR_IMAGES], cands)
        log(f"{where}: keeping each of {len(groups)} groups in FP32 in turn")
        scores = rank_groups(groups, sets, op_type, quantize, ev, t1, mse, None, td, user, log)
    for s in scores:
        vals = [sq[n] for n in s.nodes if n in sq]
        s.sqnr_db = min(vals) if vals else None
    return {
        "target": where,
        "metric": "top-1 (points) gained when the group alone is kept in FP32",
        "fp32_top1": round(ev.fp32_top1, 4),
        "int8_top1": round(t1, 4),
        "validation": vrec,
        "sqnr_images": int(min(SQNR_IMAGES, len(xc))),
        "quantizable_nodes": len(cands),
        "groups": [s.to_dict() for s in scores],
    }


def format_table(rep: dict, limit: int | None = None) -> str:
    """The ranked groups as a plain-text table."""
    rows = rep["groups"][:limit] if limit else rep["groups"]
    lines = [
        f"{rep['target']}: FP32 {rep['fp32_top1']:.2f}%, full INT8 {rep['int8_top1']:.2f}% "
        f"top-1 on {rep['validation']['images']} validation images (train split)",
        f"{'rank':>4}  {'top-1 gain':>10}  {'SQNR dB':>8}  nodes",
    ]
    for i, g in enumerate(rows, 1):
        sq = "-" if g["sqnr_db"] is None else f"{g['sqnr_db']:.1f}"
        extra = [n for n in g.get("fp32_nodes", []) if n not in g["nodes"]]
        with_ = f"  (with {', '.join(extra)})" if extra else ""
        lines.append(f"{i:>4}  {g['top1_gain']:>+10.2f}  {sq:>8}  {'+'.join(g['nodes'])}{with_}")
    return "\n".join(lines)


def plot(rep: dict, path: Path, limit: int = 30) -> Path:
    """A titled horizontal bar plot of the top-1 gain per group (PNG, atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekit.fileio import atomic_path

    rows = rep["groups"][:limit][::-1]
    labels = [_short("+".join(g["nodes"])) for g in rows]
    vals = [g["top1_gain"] for g in rows]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.6))
    ax.barh(np.arange(len(rows)), vals, color=["#c0392b" if v > 0 else "#7f8c8d" for v in vals])
    ax.set_yticks(np.arange(len(rows)), labels, fontsize=7)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("top-1 gained when kept in FP32 (points, validation slice)")
    if not any(vals):
        ax.text(
            0.5,
            0.5,
            "no group gains top-1 on this slice:\nranked by the logit error it removes",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="#555555",
            bbox={"facecolor": "white", "edgecolor": "none"},
        )
    ax.set_title(
        f"{rep['target']}: per-node INT8 sensitivity (FP32 {rep['fp32_top1']:.2f}%, "
        f"INT8 {rep['int8_top1']:.2f}%)",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _short(s: str, n: int = 48) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def write_report(rep: dict, work_dir: Path, target: str) -> tuple[Path, Path]:
    """``WORK/sensitivity-TARGET.json`` and ``.png``."""
    from edgekit.fileio import write_json

    j = write_json(Path(work_dir) / f"sensitivity-{target}.json", rep, force=True)
    p = plot(rep, Path(work_dir) / f"sensitivity-{target}.png")
    return Path(j), p


def run_sensitivity(ctx, work_dir: Path, target, images: int, log=_stderr):
    """``edgekit sensitivity``: the report of ``target``, written into ``work_dir``.

    Args:
        ctx: the work directory's :class:`BuildContext` (``pipeline.build_context``).

    Returns:
        ``(report, json path, png path)``.

    Raises:
        EdgekitError: a target that is not quantized, or whose backend has no
            per-node sensitivity; too few validation images.
    """
    fn = check_sensitivity_target(target)
    rep = fn(ctx, target, images, log)
    j, p = write_report(rep, work_dir, target.name)
    return rep, j, p


def check_sensitivity_target(target):
    """The backend's ``sensitivity`` method for ``target``.

    Raises:
        EdgekitError: a target that is not quantized, or whose backend has none.
    """
    from edgekit.backends import get_backend

    if target.precision != "int8":
        raise EdgekitError(
            f"target {target.name} is not quantized (precision {target.precision}): there is "
            "no INT8 node to rank",
            "use an INT8 target, e.g. --target ort-cpu-int8",
        )
    backend = get_backend(target.backend)
    fn = getattr(backend, "sensitivity", None)
    if fn is None:
        raise EdgekitError(
            f"target {target.name}: per-node sensitivity is implemented for ONNX Runtime "
            f"INT8 targets, not the {target.backend} backend",
            "use --target ort-cpu-int8",
        )
    return fn


def dumps(rep: dict) -> str:
    return json.dumps(rep, indent=2)
