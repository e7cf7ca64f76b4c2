"""Cross-backend comparison: ``edgekit compare A B``.

Two artifacts run on the same real, preprocessed test batches, and their logits
are compared the way Polygraphy's ``CompareFunc.simple`` compares runner outputs
(absolute difference statistics per output) plus the classification view that
matters here: top-1 agreement and cosine similarity of the logit vectors.
"""

from __future__ import annotations

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
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-30)
    return {
        "images": int(a.shape[0]),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
    }


def compare_artifacts(
    a_dir,
    b_dir,
    dataset: str | None = None,
    data_dir=None,
    work_dir=None,
    images: int = 1000,
    threads: int | None = None,
) -> dict:
    """Open two artifacts and compare them on the first ``images`` test images.

    Each artifact gets the images preprocessed with its own manifest's
    preprocessing (they must agree for a fair comparison: an error otherwise).

    Raises:
        EdgekitError: no test data, different preprocessing or classes, test
            images of another size or labels beyond the classes, or an artifact
            that cannot be opened here.
    """
    from edgekit.build import open_artifact
    from edgekit.manifest import read_manifest
    from edgekit.preprocess import Preprocess

    ma, mb = read_manifest(a_dir), read_manifest(b_dir)
    if ma["preprocess"] != mb["preprocess"]:
        raise EdgekitError(
            "the two artifacts use different preprocessing; their outputs are not comparable",
            "build both from the same work directory",
        )
    if ma.get("classes") != mb.get("classes"):
        raise EdgekitError("the two artifacts have different classes")
    if images < 1:
        raise EdgekitError("--images must be at least 1")
    test = _test_split(dataset, data_dir, work_dir)
    from edgekit.harness import check_test_split

    for m in (ma, mb):  # images of another size, or labels beyond the classes: refused
        check_test_split(m, test, dataset or str(work_dir))
    x = Preprocess.from_dict(ma["preprocess"]).apply(test.x[:images])
    logits = []
    for d in (a_dir, b_dir):
        runner, _ = open_artifact(d, threads)
        try:
            logits.append(run_batches(runner, x))
        finally:
            runner.close()
    res = compare_logits(*logits)
    y = test.y[: len(x)]
    res["a"] = {"artifact": str(a_dir), "target": ma["target"], "top1": _top1(logits[0], y)}
    res["b"] = {"artifact": str(b_dir), "target": mb["target"], "top1": _top1(logits[1], y)}
    return res


def _top1(logits, y) -> float:
    return float((logits.argmax(1) == y).mean() * 100)


def _test_split(dataset, data_dir, work_dir):
    from edgekit.data import load_dataset

    if dataset:
        return load_dataset(dataset, str(data_dir) if data_dir else None).test
    if work_dir is not None:
        from edgekit.pipeline import Workspace, load_workspace_dataset

        ws = Workspace(Path(work_dir))
        if ws.record_path.is_file():
            return load_workspace_dataset(ws.record()).test
    raise EdgekitError(
        "compare needs real test images", "pass --dataset or --work-dir of the artifacts"
    )


def format_comparison(r: dict) -> str:
    return (
        f"A {r['a']['target']} (top-1 {r['a']['top1']:.2f}%) vs B {r['b']['target']} "
        f"(top-1 {r['b']['top1']:.2f}%) on {r['images']} images\n"
        f"  top-1 agreement   {r['top1_agreement']:.2%}\n"
        f"  max |diff|        {r['max_abs_diff']:.4g}\n"
        f"  mean |diff|       {r['mean_abs_diff']:.4g}\n"
        f"  cosine (min/mean) {r['cosine_min']:.6f} / {r['cosine_mean']:.6f}"
    )
