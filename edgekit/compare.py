"""Cross-backend comparison: ``edgekit compare A B``.

Two artifacts run on the same real, preprocessed test batches, and their logits
are compared the way Polygraphy's ``CompareFunc.simple`` compares runner outputs
(absolute and relative difference statistics per output) plus the classification
view that matters here: top-1 agreement and cosine similarity of the logit vectors.

Tolerances (:class:`Tolerances`, ``--atol/--rtol/--check-error-stat/--min-agreement/
--min-cosine``) decide pass or fail. As in Polygraphy's ``--check-error-stat``, the
``elemwise`` check needs every logit to satisfy ``|a - b| <= atol + rtol * |a|``,
while ``max``/``mean``/``median`` pass when that statistic of the absolute difference
is within ``atol`` or that of the relative difference within ``rtol``.

Either side may also be an ONNX file without a manifest, such as the output of
``edgekit build --onnx-only`` (``WORK/onnx-for-tensorrt/TARGET/model.onnx``): it runs
in ONNX Runtime on the CPU with the preprocessing of its work directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.harness import run_batches


def compare_logits(a: np.ndarray, b: np.ndarray) -> dict:
    """Agreement between two logit arrays of the same images.

    Args:
        a, b: float [N, classes] logits (``a`` is the reference).

    Returns:
        ``{"images", "top1_agreement" (fraction), "max_abs_diff", "mean_abs_diff",
        "cosine_min", "cosine_mean"}``; cosine per image, of the logit vectors.

    Raises:
        EdgekitError: the shapes differ.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise EdgekitError(
            f"the artifacts' outputs differ in shape: {a.shape} vs {b.shape}",
            "compare artifacts of the same model",
        )
    d = np.abs(a - b)
    rel = d / np.maximum(np.abs(a), 1e-12)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-30)
    return {
        "images": int(a.shape[0]),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "median_abs_diff": float(np.median(d)),
        "max_rel_diff": float(rel.max()),
        "mean_rel_diff": float(rel.mean()),
        "median_rel_diff": float(np.median(rel)),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        # the elementwise check of the tolerances needs the arrays; kept out of JSON
        "_abs": d,
        "_ref": np.abs(a),
    }


ERROR_STATS = ("elemwise", "max", "mean", "median")


@dataclass
class Tolerances:
    """When two artifacts count as agreeing (``edgekit compare`` exits 1 otherwise).

    Attributes:
        atol, rtol: absolute and relative logit tolerance; None: logits not checked.
            With only one given, the other is 0.
        check_error_stat: ``elemwise`` (every logit), or ``max``/``mean``/``median``
            of the differences, as Polygraphy's ``--check-error-stat``.
        min_agreement: least fraction of images with the same top-1 class (0..1).
        min_cosine: least cosine similarity of the logit vectors of any one image.

    The defaults (98% agreement, cosine at least 0.6 on every image, logits not
    checked) let a sound INT8 artifact pass against its FP32 reference and fail
    a broken one; give ``--atol``/``--rtol`` to compare two FP32 artifacts closely.
    Measured on the shared ResNet-20 and the 10,000 CIFAR-10 test images against
    ``ort-cpu``: ``ort-cpu-int8`` 99.22% agreement, min cosine 0.986;
    ``ts-fx-int8`` 98.60%, 0.967; ``pytorch-fp32`` 100%, max |diff| 1.9e-5; the
    symmetric Q/DQ ONNX of ``trt-int8`` (``--onnx-only``, run in ONNX Runtime) 98.51%,
    min cosine 0.702 (on one image; mean 0.998).
    """

    atol: float | None = None
    rtol: float | None = None
    check_error_stat: str = "elemwise"
    min_agreement: float = 0.98
    min_cosine: float = 0.6

    def check(self) -> None:
        """Raises EdgekitError for a tolerance out of range (before any work)."""
        for name, v in (("--atol", self.atol), ("--rtol", self.rtol)):
            if v is not None and not v >= 0:
                raise EdgekitError(f"{name} must be a number >= 0, got {v}")
        if self.check_error_stat not in ERROR_STATS:
            raise EdgekitError(
                f"--check-error-stat must be one of {', '.join(ERROR_STATS)}, "
                f"got {self.check_error_stat!r}"
            )
        if not 0 <= self.min_agreement <= 1:
            raise EdgekitError(
                f"--min-agreement must be a fraction in [0, 1], got {self.min_agreement}",
                "e.g. --min-agreement 0.99",
            )
        if not -1 <= self.min_cosine <= 1:
            raise EdgekitError(f"--min-cosine must be in [-1, 1], got {self.min_cosine}")

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def check_tolerances(res: dict, tol: Tolerances) -> list[str]:
    """What in a :func:`compare_logits` result is beyond ``tol`` (empty: it passes)."""
    fails = []
    if res["top1_agreement"] < tol.min_agreement:
        fails.append(f"top-1 agreement {res['top1_agreement']:.2%} < {tol.min_agreement:.2%}")
    if res["cosine_min"] < tol.min_cosine - 1e-9:  # 1e-9: rounding of identical logits
        fails.append(f"min cosine {res['cosine_min']:.4f} < {tol.min_cosine:g}")
    if tol.atol is not None or tol.rtol is not None:
        atol, rtol = tol.atol or 0.0, tol.rtol or 0.0
        stat = tol.check_error_stat
        if stat == "elemwise":
            bad = res["_abs"] > atol + rtol * res["_ref"]
            if bad.any():
                fails.append(
                    f"{int(bad.sum())} of {bad.size} logits differ by more than "
                    f"atol {atol:g} + rtol {rtol:g} x |reference| (max |diff| "
                    f"{res['max_abs_diff']:.4g})"
                )
        else:
            ad, rd = res[f"{stat}_abs_diff"], res[f"{stat}_rel_diff"]
            if not (ad <= atol or rd <= rtol):
                fails.append(
                    f"{stat} |diff| {ad:.4g} > atol {atol:g} and {stat} relative diff "
                    f"{rd:.4g} > rtol {rtol:g}"
                )
    return fails


def compare_artifacts(
    a_dir,
    b_dir,
    dataset: str | None = None,
    data_dir=None,
    work_dir=None,
    images: int = 1000,
    threads: int | None = None,
    tolerances: Tolerances | None = None,
) -> dict:
    """Open two artifacts and compare them on the first ``images`` test images.

    Each artifact gets the images preprocessed with its own manifest's
    preprocessing (they must agree for a fair comparison: an error otherwise).
    ``a_dir``/``b_dir`` may also be an ONNX file, or a directory holding
    ``model.onnx`` but no manifest (``--onnx-only`` output); see :func:`plain_onnx`.

    Returns:
        :func:`compare_logits`' figures, ``a``/``b`` (artifact, target, top-1 %),
        ``tolerances`` and ``failures`` (empty: within the tolerances).

    Raises:
        EdgekitError: no test data, different preprocessing or classes, test
            images of another size or labels beyond the classes, or an artifact
            that cannot be opened here.
    """
    from edgekit.build import open_artifact
    from edgekit.preprocess import Preprocess

    tol = tolerances or Tolerances()
    tol.check()
    ma, mb = (_manifest(p, work_dir) for p in (a_dir, b_dir))
    if ma["preprocess"] != mb["preprocess"]:
        raise EdgekitError(
            "the two artifacts use different preprocessing; their outputs are not comparable",
            "build both from the same work directory",
        )
    if ma.get("classes") != mb.get("classes"):
        raise EdgekitError("the two artifacts have different classes")
    if images < 1:
        raise EdgekitError("--images must be at least 1")
    test = _test_split(dataset, data_dir, work_dir, (a_dir, b_dir))
    from edgekit.harness import check_test_split

    for m in (ma, mb):  # images of another size, or labels beyond the classes: refused
        check_test_split(m, test, dataset or str(work_dir))
    x = Preprocess.from_dict(ma["preprocess"]).apply(test.x[:images])
    logits = []
    for d, m in ((a_dir, ma), (b_dir, mb)):
        if m.get("_onnx"):
            from edgekit.backends.onnxruntime import OrtRunner

            runner = OrtRunner(Path(m["_onnx"]), m, threads)
        else:
            runner, _ = open_artifact(d, threads)
        try:
            logits.append(run_batches(runner, x))
        finally:
            runner.close()
    res = compare_logits(*logits)
    res["failures"] = check_tolerances(res, tol)
    del res["_abs"], res["_ref"]
    res["tolerances"] = tol.to_dict()
    y = test.y[: len(x)]
    res["a"] = {"artifact": str(a_dir), "target": ma["target"], "top1": _top1(logits[0], y)}
    res["b"] = {"artifact": str(b_dir), "target": mb["target"], "top1": _top1(logits[1], y)}
    return res


def _manifest(path, work_dir) -> dict:
    p = Path(path)
    if p.is_dir() and (p / "manifest.json").is_file():
        from edgekit.manifest import read_manifest

        return read_manifest(p)
    return plain_onnx(p, work_dir)


def plain_onnx(path, work_dir=None) -> dict:
    """A manifest-like dict for an ONNX file without a manifest, run by ONNX Runtime (CPU).

    ``path`` is a ``.onnx`` file or a directory holding ``model.onnx`` (e.g. the
    ``--onnx-only`` output ``WORK/onnx-for-tensorrt/TARGET``). The preprocessing and
    classes come from the work directory's ``edgekit.json``: ``work_dir``, else the
    first parent of ``path`` that has one.

    Raises:
        EdgekitError: no ONNX file there, or no work directory record to take the
            preprocessing from.
    """
    import json

    p = Path(path)
    onnx_file = p / "model.onnx" if p.is_dir() else p
    if not onnx_file.is_file() or onnx_file.suffix != ".onnx":
        raise EdgekitError(
            f"{path} is neither an artifact directory (with manifest.json) nor an ONNX model",
            "give WORK/artifacts/TARGET, a model.onnx, or an --onnx-only output directory",
        )
    records = [q / "edgekit.json" for q in onnx_file.resolve().parents]
    if work_dir is not None and (Path(work_dir) / "edgekit.json").is_file():
        records.insert(0, Path(work_dir) / "edgekit.json")
    rec_path = next((r for r in records if r.is_file()), None)
    if rec_path is None:
        raise EdgekitError(
            f"{onnx_file} has no manifest, and no edgekit.json (work directory record) was "
            "found to take its preprocessing from",
            "pass --work-dir of the work directory the ONNX model came from",
        )
    try:
        rec = json.loads(rec_path.read_text())
        pre = rec["preprocess"]
    except (OSError, ValueError, KeyError, TypeError):
        raise EdgekitError(f"{rec_path} holds no preprocessing record") from None
    from edgekit.backends.base import onnx_io

    try:
        io = onnx_io(onnx_file)
    except Exception as e:
        raise EdgekitError(f"cannot read {onnx_file} as ONNX: {type(e).__name__}: {e}") from None
    name = p.name if p.is_dir() else onnx_file.stem
    return {
        "target": f"{name} (ONNX, no manifest)",
        "backend": "onnxruntime",
        "io": io,
        "preprocess": pre,
        "classes": rec.get("classes"),
        "_onnx": str(onnx_file),
    }


def _top1(logits, y) -> float:
    return float((logits.argmax(1) == y).mean() * 100)


def _test_split(dataset, data_dir, work_dir, artifacts=()):
    """The test split: ``--dataset``, else that of ``work_dir``'s record, else that of
    the first work directory above one of the ``artifacts`` (``WORK/artifacts/T``)."""
    from edgekit.data import load_dataset

    if dataset:
        return load_dataset(dataset, str(data_dir) if data_dir else None).test
    from edgekit.pipeline import Workspace, load_workspace_dataset

    roots = [Path(work_dir)] if work_dir is not None else []
    for a in artifacts:
        roots += list(Path(a).resolve().parents)[:3]
    for root in roots:
        ws = Workspace(root)
        if ws.record_path.is_file():
            return load_workspace_dataset(ws.record()).test
    raise EdgekitError(
        "compare needs real test images", "pass --dataset or --work-dir of the artifacts"
    )


def format_comparison(r: dict) -> str:
    """The comparison as text, its verdict (PASS/FAIL and why) last."""
    fails = r.get("failures") or []
    t = r.get("tolerances") or {}
    verdict = "PASS" if not fails else "FAIL: " + "; ".join(fails)
    logit_tol = (
        f", atol {t.get('atol') or 0:g} rtol {t.get('rtol') or 0:g} ({t.get('check_error_stat')})"
        if t.get("atol") is not None or t.get("rtol") is not None
        else ""
    )
    return (
        f"A {r['a']['target']} (top-1 {r['a']['top1']:.2f}%) vs B {r['b']['target']} "
        f"(top-1 {r['b']['top1']:.2f}%) on {r['images']} images\n"
        f"  top-1 agreement   {r['top1_agreement']:.2%}\n"
        f"  max |diff|        {r['max_abs_diff']:.4g}\n"
        f"  mean |diff|       {r['mean_abs_diff']:.4g}\n"
        f"  median |diff|     {r.get('median_abs_diff', float('nan')):.4g}\n"
        f"  cosine (min/mean) {r['cosine_min']:.6f} / {r['cosine_mean']:.6f}\n"
        f"  tolerances        agreement >= {t.get('min_agreement', 0):.2%}, "
        f"cosine >= {t.get('min_cosine', -1):g}{logit_tol}\n"
        f"{verdict}"
    )
