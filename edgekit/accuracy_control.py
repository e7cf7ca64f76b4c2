"""Quantization under accuracy control: per-node sensitivity and greedy FP32 fallback.

Two questions that users ask when INT8 loses accuracy, answered on a Q/DQ ONNX model:

* **Which nodes cause the drop?** :func:`rank_groups` keeps one dependency group of
  nodes in FP32 at a time (everything else INT8) and measures the top-1 gained on a
  held-out validation slice; :func:`activation_sqnr` compares every node's output in
  the Q/DQ model with the FP32 model on calibration images (signal-to-quantization-
  noise ratio in dB: the comparison ONNX Runtime's ``qdq_loss_debug`` makes, streamed
  over batches so the activations are never all held at once).
* **How do I get it back within a limit?** :func:`fallback_search` starts from full
  INT8 and keeps the most sensitive groups in FP32 one at a time, in ranking order,
  until the top-1 drop on the validation slice is at most ``max_drop`` points; when the
  limit cannot be met it raises :class:`AccuracyNotMetError` (exit status 1) with the
  best drop reached, never returning an all-FP32 model in silence.

The algorithm follows OpenVINO's accuracy-aware quantization (POT ``AccuracyAware``,
now NNCF ``quantize_with_accuracy_control``): full INT8 first; a ranking subset of the
validation data, chosen among the images where the INT8 and FP32 predictions differ;
each quantized layer reverted alone to rank its contribution to the drop; then the
most harmful layer reverted, the whole validation set re-evaluated, and so on until the
drop is within the limit (OpenVINO docs, "AccuracyAwareQuantization Parameters").

This module knows nothing of a particular quantizer: the caller passes ``quantize``,
a function ``(fp32_nodes: list[str], out_dir: Path) -> Path`` that writes the Q/DQ
model with those nodes kept in FP32 (for ONNX Runtime: ``quantize_static`` with
``nodes_to_exclude`` from cached calibration ranges; see
:mod:`edgekit.sensitivity`). It needs ``onnx`` and ``onnxruntime``.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

#: Activations that ONNX Runtime's Q/DQ quantizer folds into the preceding node's output
#: quantization (``QDQRemovableActivation``): keeping one in FP32 alone changes nothing.
FOLDED_ACTIVATIONS = frozenset({"Relu", "Clip"})
#: Op types that only move data: ONNX Runtime passes their quantization through, and
#: keeping one in FP32 saves no arithmetic, so they are not candidates.
DATA_MOVEMENT = frozenset(
    {
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Gather",
        "GatherElements", "Split", "Pad", "Concat", "Resize", "TopK", "Where",
    }
)  # fmt: skip
#: Op types that merge two branches: the nodes feeding them are judged together.
MERGE_OPS = frozenset({"Add", "Sum", "Mul"})
#: Ranking subset size (OpenVINO's ``ranking_subset_size`` default).
RANKING_SUBSET = 300


class AccuracyNotMetError(EdgekitError):
    """The accuracy limit cannot be met: a failed build (exit status 1), not bad input."""

    exit_code = 1


Quantize = Callable[[list[str], Path], Path]


# ---------------------------------------------------------------- the graph


def candidate_nodes(model, op_types: set[str], exclude=()) -> list[str]:
    """Names of the nodes ONNX Runtime quantizes, in graph order.

    Args:
        model: an ``onnx.ModelProto`` after ``quant_pre_process``.
        op_types: the op types the quantizer handles (its registry, or the target's
            ``op_types_to_quantize``).
        exclude: nodes already kept in FP32 by the user.

    Folded activations (Relu, Clip) and data movement (:data:`DATA_MOVEMENT`) are left
    out: in a Q/DQ model they have no arithmetic of their own to keep in FP32. Nodes without a name cannot be named in
    ``nodes_to_exclude`` and are left out too.
    """
    skip = set(exclude)
    return [
        n.name
        for n in model.graph.node
        if n.name and n.op_type in op_types and n.name not in skip
        if n.op_type not in FOLDED_ACTIVATIONS and n.op_type not in DATA_MOVEMENT
    ]


def dependency_groups(model, candidates: list[str]) -> list[list[str]]:
    """Candidate nodes grouped where their quantization is tied.

    A merge node (``Add`` of a residual block, ``Concat``...) forms one group with the
    candidate nodes that produce its inputs only for it (through a folded Relu/Clip):
    the last convolution of the residual branch and a projection shortcut. Keeping the
    Add alone in FP32 would still quantize both of its inputs, so the pair is judged
    together. Every other candidate is a group of its own.

    Returns:
        Groups in graph order, each a list of node names; every candidate is in
        exactly one group.
    """
    cand = set(candidates)
    by_name = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    parent = {c: c for c in candidates}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for name in candidates:
        node = by_name[name]
        if node.op_type not in MERGE_OPS:
            continue
        for t in node.input:
            p = producer.get(t)
            # walk back through one folded activation (Conv -> Relu -> Add)
            if p is not None and p.op_type in FOLDED_ACTIVATIONS and len(consumers[t]) == 1:
                t = p.input[0]
                p = producer.get(t)
            if p is None or p.name not in cand or t in graph_outputs:
                continue
            if len(consumers.get(t, [])) == 1:  # produced only for this merge
                parent[find(p.name)] = find(name)
    groups: dict[str, list[str]] = {}
    for c in candidates:
        groups.setdefault(find(c), []).append(c)
    return list(groups.values())


def fallback_set(model, group: list[str], op_types: set[str]) -> list[str]:
    """The nodes to keep in FP32 so that ``group`` really computes in FP32.

    ONNX Runtime's Q/DQ quantizer quantizes a tensor where its producer is quantized
    (a Conv's output, with a folded ReLU), and every consumer then reads the
    dequantized tensor. Excluding a node alone (``nodes_to_exclude``) leaves the
    quantization noise on its inputs. So the group is extended backwards, through
    folded activations and data-movement nodes, to the quantized producers of its
    activation inputs: those run in FP32 too (their own inputs stay quantized). This is
    the ONNX Runtime form of reverting the activation quantizers feeding a layer
    (NNCF/OpenVINO keep quantizers on inputs only).

    Returns:
        ``group`` followed by the added nodes, without repeats, in discovery order.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    inits = {i.name for i in model.graph.initializer}
    out = list(group)
    seen = set(group)
    for name in group:
        stack = [t for t in by_name[name].input if t and t not in inits]
        while stack:
            p = producer.get(stack.pop())
            if p is None or not p.name or p.name in seen or p.op_type == "Constant":
                continue
            if p.op_type not in op_types:  # an FP32 op: its output is not quantized
                continue
            seen.add(p.name)
            out.append(p.name)
            if p.op_type in FOLDED_ACTIVATIONS or p.op_type in DATA_MOVEMENT:
                stack.extend(t for t in p.input if t and t not in inits)
    return out


def group_label(group: list[str]) -> str:
    """One short name for a group: its nodes joined with ``+``."""
    return "+".join(group)


# ---------------------------------------------------------------- running models


def session(path: Path | bytes, threads: int = 1, optimize: bool = True):
    """An ONNX Runtime CPU session (``threads`` intra-op threads, sequential)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def logits(sess, x: np.ndarray, batch: int = 100) -> np.ndarray:
    """float32 [N, classes] of float32 [N, C, H, W] ``x``, in batches the model accepts.

    A model with a fixed batch size gets exactly that size (the last batch padded).
    """
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    bs = fixed or batch
    out = []
    for i in range(0, len(x), bs):
        xb = x[i : i + bs]
        real = len(xb)
        if fixed and real < fixed:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - real, axis=0)])
        y = sess.run(None, {inp.name: np.ascontiguousarray(xb, np.float32)})[0]
        out.append(np.asarray(y, np.float32)[:real])
    return np.concatenate(out)


def top1(z: np.ndarray, y: np.ndarray) -> float:
    """Top-1 in percent of logits ``z`` [N, K] against int labels ``y`` [N]."""
    return float((z.argmax(1) == y).mean() * 100.0)


@dataclass
class Evaluator:
    """Top-1 of Q/DQ variants on the validation slice, against the FP32 model.

    Attributes:
        x, y: the validation slice (float32 [N, C, H, W], int64 [N]); never the test split.
        fp32_logits: float32 [N, K] of the FP32 model on ``x``.
        threads: ONNX Runtime intra-op threads.
    """

    x: np.ndarray
    y: np.ndarray
    fp32_logits: np.ndarray
    threads: int = 1
    evaluations: int = 0

    @property
    def fp32_top1(self) -> float:
        return top1(self.fp32_logits, self.y)

    def __call__(self, path: Path, idx: np.ndarray | None = None) -> tuple[float, float]:
        """``(top-1 %, mean squared logit error vs FP32)`` of the model at ``path``
        on the slice (or its rows ``idx``)."""
        x = self.x if idx is None else self.x[idx]
        y = self.y if idx is None else self.y[idx]
        ref = self.fp32_logits if idx is None else self.fp32_logits[idx]
        z = logits(session(path, self.threads), x)
        self.evaluations += 1
        return top1(z, y), float(np.mean((z - ref) ** 2))


def ranking_subset(int8_logits, fp32_logits, y, size: int = RANKING_SUBSET) -> np.ndarray:
    """Indices of the ranking subset: the images where INT8 and FP32 predictions differ
    first (then those where INT8 is wrong), filled up to ``size`` in slice order."""
    p8, p32 = int8_logits.argmax(1), fp32_logits.argmax(1)
    first = np.flatnonzero(p8 != p32)
    second = np.flatnonzero((p8 == p32) & (p8 != y))
    rest = np.flatnonzero((p8 == p32) & (p8 == y))
    return np.concatenate([first, second, rest])[: max(size, len(first))]


# ---------------------------------------------------------------- sensitivity


@dataclass
class GroupScore:
    """One dependency group's sensitivity.

    Attributes:
        nodes: ONNX node names kept in FP32 together.
        op_types: their op types.
        top1_gain: top-1 points gained on the ranking/validation images when this
            group alone is kept in FP32 (positive: it hurts in INT8).
        mse_gain: reduction of the mean squared logit error vs FP32 (tie-breaker).
        sqnr_db: lowest output SQNR (dB) of the group's nodes, FP32 vs Q/DQ, on
            calibration images (lower: more quantization noise); None if not measured.
        fp32_set: every node kept in FP32 for this group (:func:`fallback_set`).
    """

    nodes: list[str]
    op_types: list[str]
    top1_gain: float
    mse_gain: float
    sqnr_db: float | None = None
    fp32_set: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "nodes": list(self.nodes),
            "fp32_nodes": list(self.fp32_set),
            "op_types": list(self.op_types),
            "top1_gain": round(self.top1_gain, 4),
            "mse_gain": float(f"{self.mse_gain:.6g}"),
            "sqnr_db": None if self.sqnr_db is None else round(self.sqnr_db, 3),
        }


def rank_groups(
    groups: list[list[str]],
    sets: list[list[str]],
    op_type: dict[str, str],
    quantize: Quantize,
    evaluate: Evaluator,
    base_top1: float,
    base_mse: float,
    idx: np.ndarray | None,
    work: Path,
    keep: list[str] = (),
    log=None,
) -> list[GroupScore]:
    """Keep each group alone in FP32 (plus ``keep``) and rank by top-1 gained.

    ``sets[k]``: the nodes kept in FP32 for ``groups[k]`` (:func:`fallback_set`).
    Ranked by top-1 gained, ties broken by the reduction of the logit error vs FP32
    (on a slice where few images change, many groups gain 0 points).

    Returns:
        The groups' scores, most sensitive first.
    """
    scores = []
    for k, (g, fs) in enumerate(zip(groups, sets, strict=True)):
        path = quantize(list(dict.fromkeys([*keep, *fs])), work / f"rank-{k}")
        t1, mse = evaluate(path, idx)
        scores.append(
            GroupScore(
                list(g), [op_type[n] for n in g], t1 - base_top1, base_mse - mse, fp32_set=fs
            )
        )
        if log:
            log(f"  [{k + 1}/{len(groups)}] {group_label(g)}: {t1 - base_top1:+.2f} points")
    scores.sort(key=lambda s: (-s.top1_gain, -s.mse_gain))
    return scores


def activation_sqnr(
    fp32_path: Path, qdq_path: Path, x: np.ndarray, nodes: list[str], batch: int = 16
) -> dict[str, float]:
    """Output SQNR (dB) of each node, FP32 model vs its Q/DQ model, over ``x``.

    For a node N with output tensor T in the FP32 model (T after N's folded Relu/Clip,
    if any), the Q/DQ counterpart is the tensor the Q/DQ model feeds to T's consumer in
    the same input slot: ``DequantizeLinear(QuantizeLinear(T'))`` where it is quantized.
    ``SQNR = 10 log10(sum T^2 / sum (T - T_qdq)^2)``: the error ``qdq_loss_debug``'s
    ``compute_activation_error`` reports between the two models, accumulated over
    batches. Errors accumulate downstream, so it is read together with the top-1 gain.

    Args:
        x: float32 [N, C, H, W] calibration images.
        nodes: node names (present in both models).

    Returns:
        ``{node: dB}`` (``inf`` when identical); nodes without a counterpart are left out.
    """
    import onnx

    fm = onnx.load(str(fp32_path))
    qm = onnx.load(str(qdq_path))
    f_nodes = {n.name: n for n in fm.graph.node}
    q_nodes = {n.name: n for n in qm.graph.node if n.name}
    consumers: dict[str, list] = {}
    for n in fm.graph.node:
        for i, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, i))
    graph_out = {o.name for o in fm.graph.output}
    pairs: dict[str, tuple[str, str]] = {}
    for name in nodes:
        node = f_nodes.get(name)
        if node is None or not node.output:
            continue
        t = node.output[0]
        cons = consumers.get(t, [])
        if len(cons) == 1 and cons[0][0].op_type in FOLDED_ACTIVATIONS:
            t = cons[0][0].output[0]
            cons = consumers.get(t, [])
        q = t if t in graph_out else None
        for c, i in cons:
            if c.name in q_nodes and i < len(q_nodes[c.name].input):
                q = q_nodes[c.name].input[i]
                break
        if q is not None:
            pairs[name] = (t, q)
    f_sess = session(_with_outputs(fm, {t for t, _ in pairs.values()}), optimize=False)
    q_sess = session(_with_outputs(qm, {q for _, q in pairs.values()}), optimize=False)
    sig = dict.fromkeys(pairs, 0.0)
    err = dict.fromkeys(pairs, 0.0)
    f_names = [o.name for o in f_sess.get_outputs()]
    q_names = [o.name for o in q_sess.get_outputs()]
    f_in, q_in = f_sess.get_inputs()[0].name, q_sess.get_inputs()[0].name
    for i in range(0, len(x), batch):
        xb = np.ascontiguousarray(x[i : i + batch], np.float32)
        fv = dict(zip(f_names, f_sess.run(None, {f_in: xb}), strict=True))
        qv = dict(zip(q_names, q_sess.run(None, {q_in: xb}), strict=True))
        for name, (t, q) in pairs.items():
            a = fv[t].astype(np.float64)
            b = qv[q].astype(np.float64)
            sig[name] += float(np.sum(a * a))
            err[name] += float(np.sum((a - b) ** 2))
    return {
        n: (math.inf if err[n] == 0 else 10.0 * math.log10(max(sig[n], 1e-30) / err[n]))
        for n in pairs
    }


def _with_outputs(model, tensors: set[str]) -> bytes:
    """``model`` serialized with ``tensors`` added as graph outputs."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in sorted(tensors - have):
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    return m.SerializeToString()


# ---------------------------------------------------------------- latency


def latency_ratios(
    paths: list[Path], x1: np.ndarray, rounds: int = 5, iters: int = 30, warmup: int = 5
) -> list[dict]:
    """p50 batch-1 latency of each model relative to the first, measured interleaved.

    Each round runs every model ``iters`` times in turn (1 intra-op thread), so a load
    change on a shared machine hits all models alike. The ratio is the median of all
    samples of a model over the median of the first model's; the spread is the min and
    max of the per-round ratios.

    Returns:
        One dict per path: ``{"p50_ms", "ratio", "ratio_min", "ratio_max"}``.
    """
    sessions = [session(p, 1) for p in paths]
    name = sessions[0].get_inputs()[0].name
    x1 = np.ascontiguousarray(x1[:1], np.float32)
    feeds = [{s.get_inputs()[0].name: x1} for s in sessions]
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            s.run(None, f)
    samples = [[[] for _ in range(rounds)] for _ in paths]
    for r in range(rounds):
        for j, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(None, f)
                samples[j][r].append((time.perf_counter() - t0) * 1e3)
    del name
    base_all = np.median(np.concatenate(samples[0]))
    base_r = [np.median(s) for s in samples[0]]
    out = []
    for j in range(len(paths)):
        per_round = [np.median(samples[j][r]) / base_r[r] for r in range(rounds)]
        p50 = float(np.median(np.concatenate(samples[j])))
        out.append(
            {
                "p50_ms": round(p50, 4),
                "ratio": round(p50 / base_all, 4),
                "ratio_min": round(float(min(per_round)), 4),
                "ratio_max": round(float(max(per_round)), 4),
            }
        )
    return out


# ---------------------------------------------------------------- the fallback loop


def check_max_drop(max_drop, validation_images: int | None, where: str) -> int:
    """Check ``max_drop`` and the validation slice size before any heavy work.

    Args:
        max_drop: points of top-1, in (0, 100].
        validation_images: the slice size asked for; None or 0: the smallest that
            resolves ``max_drop`` (:func:`edgekit.data.min_images_for_drop`).

    Returns:
        The slice size to use.

    Raises:
        EdgekitError: ``max_drop`` outside (0, 100], or a slice too small to measure
            it (the message says how many images are needed).
    """
    from edgekit.data import min_images_for_drop

    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)):
        raise EdgekitError(f"{where}: max_drop must be a number of top-1 points, got {max_drop!r}")
    if not 0 < max_drop <= 100 or math.isnan(max_drop):
        raise EdgekitError(
            f"{where}: max_drop = {max_drop} is outside (0, 100] points of top-1",
            "give the largest top-1 drop you accept, e.g. max_drop = 0.1",
        )
    need = min_images_for_drop(max_drop)
    if validation_images and validation_images < need:
        raise EdgekitError(
            f"{where}: a validation slice of {validation_images} images cannot measure a drop "
            f"of {max_drop} point(s) (one image is {100 / validation_images:.3g} points); "
            f"it needs at least {need:,} images",
            f"set validation_images = {need} (or more), or a larger max_drop",
        )
    return int(validation_images or need)


@dataclass
class FallbackResult:
    """What :func:`fallback_search` found.

    Attributes:
        path: the chosen Q/DQ model (in ``work``).
        fp32_nodes: the nodes it keeps in FP32 (beyond the user's own), in the order added.
        steps: one record per evaluated model: full INT8 first, then each group added.
        ranking: the groups' scores, most sensitive first.
    """

    path: Path
    fp32_nodes: list[str]
    fp32_top1: float
    top1: float
    drop: float
    steps: list[dict] = field(default_factory=list)
    ranking: list[GroupScore] = field(default_factory=list)
    step_paths: list[Path] = field(default_factory=list)


def fallback_search(
    fp32_model,
    op_types: set[str],
    quantize: Quantize,
    evaluate: Evaluator,
    max_drop: float,
    work: Path,
    user_exclude: list[str] = (),
    max_iterations: int | None = None,
    log=None,
    where: str = "max_drop",
) -> FallbackResult:
    """Greedy accuracy-aware fallback: full INT8, then FP32 groups one at a time.

    1. Quantize everything (but ``user_exclude``); evaluate top-1 on the validation
       slice; stop if ``fp32_top1 - top1 <= max_drop``.
    2. Rank the dependency groups (:func:`rank_groups`) on the ranking subset
       (:func:`ranking_subset`).
    3. Keep the most sensitive group in FP32, evaluate the whole slice, and repeat
       with the next group until the drop is within ``max_drop``.

    Args:
        fp32_model: the ``onnx.ModelProto`` after ``quant_pre_process`` (names and
            graph of the nodes ``quantize`` can keep in FP32).
        max_iterations: at most this many groups kept in FP32 (default: all).

    Raises:
        AccuracyNotMetError: the limit was not met after ``max_iterations`` groups
            (or all of them); the message gives the best drop reached and with how
            many FP32 nodes.
    """
    cands = candidate_nodes(fp32_model, op_types, user_exclude)
    op_type = {n.name: n.op_type for n in fp32_model.graph.node}
    groups = dependency_groups(fp32_model, cands)
    sets = [fallback_set(fp32_model, g, op_types) for g in groups]
    fp32 = evaluate.fp32_top1
    path = quantize(list(user_exclude), work / "int8")
    t1, _ = evaluate(path)
    steps = [{"group": [], "fp32_nodes": [], "top1": round(t1, 4), "drop": round(fp32 - t1, 4)}]
    if log:
        log(f"{where}: FP32 {fp32:.2f}%, full INT8 {t1:.2f}% (drop {fp32 - t1:.2f})")
    res = FallbackResult(path, [], fp32, t1, fp32 - t1, steps, [], [path])
    if fp32 - t1 <= max_drop + 1e-9:
        return res
    z8 = logits(session(path, evaluate.threads), evaluate.x)
    idx = ranking_subset(z8, evaluate.fp32_logits, evaluate.y)
    b1, bm = evaluate(path, idx)
    if log:
        log(f"{where}: ranking {len(groups)} groups on {len(idx)} validation images")
    ranking = rank_groups(
        groups, sets, op_type, quantize, evaluate, b1, bm, idx, work, list(user_exclude), log
    )
    res.ranking = ranking
    kept: list[str] = []
    best = (fp32 - t1, path, [])
    limit = len(ranking) if max_iterations is None else min(max_iterations, len(ranking))
    for k, g in enumerate(ranking[:limit]):
        new = [n for n in g.fp32_set if n not in kept]
        kept = [*kept, *new]
        path = quantize(list(dict.fromkeys([*user_exclude, *kept])), work / f"step-{k}")
        t1, _ = evaluate(path)
        steps.append(
            {
                "group": list(g.nodes),
                "fp32_nodes": new,
                "top1": round(t1, 4),
                "drop": round(fp32 - t1, 4),
            }
        )
        res.step_paths.append(path)
        if log:
            log(f"{where}: + {group_label(g.nodes)} in FP32 -> {t1:.2f}% (drop {fp32 - t1:.2f})")
        if fp32 - t1 < best[0]:
            best = (fp32 - t1, path, list(kept))
        if fp32 - t1 <= max_drop + 1e-9:
            res.path, res.fp32_nodes, res.top1, res.drop = path, kept, t1, fp32 - t1
            return res
    raise AccuracyNotMetError(
        f"{where}: max_drop = {max_drop} not met on the validation slice: the best drop "
        f"reached was {best[0]:.2f} points with {len(set(best[2]) & set(cands))} of "
        f"{len(cands)} quantizable nodes in FP32 (FP32 top-1 {fp32:.2f}%)",
        "raise max_drop, calibrate differently (calibration_method, calib_per_class), "
        "or fine-tune with quantization-aware training (edgekit qat)",
    )


def temp_work(prefix: str = "edgekit-acc-"):
    """A temporary directory for the candidate models (removed afterwards)."""
    return tempfile.TemporaryDirectory(prefix=prefix)
