"""PyTorch -> ONNX, checked numerically against PyTorch on real images.

The exported file is a single ``.onnx`` (no external-data side file) with one
named input (``input``, float32 [batch, 3, H, W]) and one output (``logits``,
float32 [batch, classes]), a dynamic batch dimension, opset 17 or later. It is
validated by ``onnx.checker``, optionally simplified with onnxslim, and then run
in ONNX Runtime (CPU) on a real batch: the largest absolute logit difference and
the top-1 agreement with PyTorch are reported, and a difference beyond
``atol + rtol * max|logit|`` fails the export.

Exporters (``torch.onnx.export`` docs): ``dynamo`` (the default, ``torch.export``
based) or ``torchscript`` (the older tracer, faster to run, deprecated upstream).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.fileio import atomic_path, fs_error, fs_fault

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 17


@dataclass
class ExportCheck:
    """The numerical check of an export (units: logits)."""

    images: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    tolerance: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints and deprecation warnings."""
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(level)


def _export(model, sample, path: Path, opset: int, exporter: str) -> None:
    import torch

    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=4096)
        arg = next(iter(__import__("inspect").signature(model.forward).parameters))
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={arg: {0: batch}},
            external_data=False,
            verbose=False,
        )
    elif exporter == "torchscript":
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    else:
        raise EdgekitError(f"unknown exporter {exporter!r}", "use dynamo or torchscript")


def nonfinite_parameters(model) -> dict[str, int]:
    """Name -> count of NaN/Inf values, for every floating parameter and buffer of ``model``."""
    import torch

    bad = {}
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_floating_point():
                n = int((~torch.isfinite(t)).sum())
                if n:
                    bad[name] = n
    return bad


def check_finite_model(model, where: str = "the model", outputs: np.ndarray | None = None) -> None:
    """Refuse a model with NaN/Inf weights (or NaN/Inf ``outputs`` on real images).

    Checked before an export or a build from a checkpoint, so such a model is named
    for what it is, not as an exporter mismatch ("max |diff| nan > tolerance nan").

    Args:
        model: an ``nn.Module``; its floating parameters and buffers are checked.
        where: what the model is (a checkpoint path), for the message.
        outputs: optional float logits [N, classes] of the model on real images.

    Raises:
        EdgekitError: ``the model produces NaN/Inf outputs (N non-finite parameter
            values in LAYER, ...) -- check the checkpoint``.
    """
    bad = nonfinite_parameters(model)
    if bad:
        layers = ", ".join(list(bad)[:3]) + (", ..." if len(bad) > 3 else "")
        raise EdgekitError(
            f"{where} produces NaN/Inf outputs ({sum(bad.values())} non-finite parameter "
            f"values in {layers})",
            "check the checkpoint",
        )
    if outputs is not None:
        check_finite_outputs(outputs, where)


def check_finite_outputs(outputs: np.ndarray, where: str = "the model") -> None:
    """Refuse NaN/Inf in float logits [N, classes] of a model whose parameters are finite.

    Raises:
        EdgekitError: ``the model produces NaN/Inf outputs (N non-finite logits ...)``.
    """
    if not np.isfinite(outputs).all():
        n = int((~np.isfinite(outputs)).sum())
        raise EdgekitError(
            f"{where} produces NaN/Inf outputs ({n} non-finite logits on real images, "
            "although every parameter is finite)",
            "check the checkpoint and the preprocessing",
        )


def check_onnx_against_torch(
    model, onnx_path: Path, x: np.ndarray, atol: float = 1e-3, rtol: float = 1e-3
) -> ExportCheck:
    """Run ``x`` (float32 [N, 3, H, W]) through PyTorch and ONNX Runtime and compare logits."""
    import onnxruntime as ort
    import torch

    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    check_finite_outputs(ref)  # the parameters were checked before the export
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    diff = np.abs(out - ref)
    tol = atol + rtol * float(np.abs(ref).max())
    agree = float((out.argmax(1) == ref.argmax(1)).mean())
    return ExportCheck(
        images=len(x),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        top1_agreement=agree,
        tolerance=tol,
        passed=bool(diff.max() <= tol),
    )


def export_onnx(
    model,
    x: np.ndarray,
    path: str | Path,
    *,
    opset: int = 18,
    simplify: bool = True,
    exporter: str = "dynamo",
    force: bool = False,
    atol: float = 1e-3,
    rtol: float = 1e-3,
) -> ExportCheck:
    """Export ``model`` to a single ONNX file and check it against PyTorch.

    Args:
        model: an ``nn.Module`` in eval mode, float32 [N, 3, H, W] -> [N, classes].
        x: a real preprocessed batch, float32 [N, 3, H, W], used for the check
            (its first image is the export sample).
        path: the ``.onnx`` file to write (atomically).
        opset: ONNX opset, at least 17.
        simplify: run onnxslim on the exported graph.
        exporter: ``dynamo`` or ``torchscript``.
        force: overwrite an existing file.
        atol, rtol: tolerance on the largest absolute logit difference.

    Returns:
        The :class:`ExportCheck`.

    Raises:
        EdgekitError: opset too old, NaN/Inf weights or outputs
            (:func:`check_finite_model`), the exporter fails (the message names the
            failing operator or module), the checker fails, the outputs differ
            beyond tolerance, or a file-system fault (read-only, no space) naming
            ``path``. No file is left behind then, not even a hidden temporary one.
    """
    import torch

    if opset < MIN_OPSET:
        raise EdgekitError(f"opset {opset} is too old", f"use {MIN_OPSET} or later")
    model = model.eval()
    check_finite_model(model)
    sample = torch.from_numpy(np.ascontiguousarray(x[:2] if len(x) > 1 else x))
    with atomic_path(path, force=force) as tmp:
        tmp_onnx = tmp.with_suffix(".onnx")
        try:
            _export_checked(model, sample, tmp, tmp_onnx, path, opset, exporter, simplify)
        finally:
            with contextlib.suppress(OSError):
                tmp_onnx.unlink(missing_ok=True)
        check = check_onnx_against_torch(model, tmp, x, atol, rtol)
        if not check.passed:
            raise EdgekitError(
                f"ONNX output differs from PyTorch: max |diff| {check.max_abs_diff:.3g} > "
                f"tolerance {check.tolerance:.3g} (top-1 agreement {check.top1_agreement:.2%})",
                "try the other exporter with --exporter, or a newer opset",
            )
    return check


def _export_checked(model, sample, tmp: Path, tmp_onnx: Path, path, opset, exporter, simplify):
    """Export into ``tmp_onnx``, check (and simplify) it, save it as ``tmp``."""
    import onnx

    try:
        with _quiet():
            _export(model, sample, tmp_onnx, opset, exporter)
    except EdgekitError:
        raise
    except Exception as e:
        fault = fs_fault(e)  # a full disk is not an exporter problem
        if fault is not None:
            raise fs_error(fault, path) from None
        msg = str(e).strip().splitlines()
        raise EdgekitError(
            f"ONNX export ({exporter}) failed: {msg[0] if msg else type(e).__name__}",
            "try --exporter torchscript, or check that the model is traceable",
        ) from None
    try:
        proto = onnx.load(str(tmp_onnx))
        onnx.checker.check_model(proto, full_check=True)
        if simplify:
            import onnxslim

            with _quiet():
                proto = onnxslim.slim(proto)
            onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    except onnx.checker.ValidationError as e:
        raise EdgekitError(f"the exported ONNX fails onnx.checker: {e}") from None
