"""Quantization-aware training (QAT) to a Q/DQ ONNX that ONNX Runtime runs.

Fine-tunes the work directory's model with fake quantization that matches what
``ort-cpu-int8`` deploys: symmetric per-channel INT8 weights (zero point 0) and
per-tensor UINT8 activations (asymmetric, U8S8: VNNI's native form), and exports the
fake-quantized model as a Q/DQ ONNX, packaged as the artifact ``ort-cpu-int8-qat``
with a manifest like any ``ort-cpu-int8`` build.

The flow is PyTorch's FX graph-mode QAT (``torch.ao.quantization.quantize_fx``; the
PyTorch docs, "Quantization", eager/FX QAT; deprecated in torch 2.13 in favour of
torchao's PT2E, still shipped and working):

1. BatchNorm is folded into the preceding convolution (``fuse_fx`` in eval mode,
   the BN statistics of the trained model), so the exported graph is Conv(+bias)+Relu,
   as ONNX Runtime's quantizer sees it; Conv+ReLU are fused so the ReLU output, not
   the Conv output, carries the activation quantizer. BN statistics are thus frozen
   from the first step (``freeze_bn_stats`` has nothing left to freeze).
2. ``prepare_qat_fx`` inserts ``FakeQuantize`` modules (weights: per-channel min/max,
   ``per_channel_symmetric``, qint8; activations: ``per_tensor_affine``, quint8 0..255).
   By default (``activation_ranges = "calibrated"``) their scales are computed once on
   the calibration images exactly as ``ort-cpu-int8``'s MinMax PTQ computes them
   (``MinMaxObserver`` for activations) and frozen, so training starts from the deployed
   PTQ model and moves only the weights; with ``"moving"`` the observers are moving
   averages (``MovingAverageMinMaxObserver``) updated on the training batches.
   The model is fine-tuned with SGD (straight-through estimator through the rounding;
   Jacob et al., CVPR 2018, "Quantization and Training of Neural Networks for Efficient
   Integer-Arithmetic-Only Inference").
3. With ``"moving"``, the observers are frozen part-way through training
   (``observer_fraction``). Then
   ``torch.onnx.export`` (the TorchScript exporter) maps each ``fake_quantize_per_{tensor,channel}_affine`` to ``QuantizeLinear`` +
   ``DequantizeLinear``; per-tensor scales and zero points are made scalars
   (ONNX Runtime's fused QLinear kernels require it) and the weights are stored as
   INT8 initializers (:func:`fold_weight_quantizers`).

Weights are 7-bit by default (``reduce_range``: fake quantization with quant_min -64,
quant_max 63, scale ``max|w| / 63.5``), the scheme ``ort-cpu-int8`` deploys by default:
no pair of weights can then exceed int16 in ``vpmaddubsw`` on an x86 CPU without VNNI,
so the artifact has the same top-1 on every x86 CPU. ``reduce_range=False`` trains
full-range 8-bit weights (-128..127), which rely on VNNI; either way the manifest's
``isa`` record is computed from the exported weights (:func:`edgekit.isa.isa_record`,
:func:`edgekit.saturation.risky_weight_pairs`), as ``ort-cpu-int8`` builds do. The
TorchScript exporter accepts only full 8-bit ranges, so a 7-bit quantizer is exported
as the equivalent -128..127 one (:func:`widen_weight_ranges`).
TensorRT consumes Q/DQ ONNX too, but expects symmetric activations: unverified here.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

TARGET = "ort-cpu-int8-qat"
OPSET = 17


@dataclass
class QatConfig:
    """QAT fine-tuning settings.

    Attributes:
        epochs: passes over the training split (fractions allowed), in (0, 100].
        steps: at most this many optimizer steps (None: ``epochs`` decides).
        lr: peak learning rate of SGD (momentum 0.9, cosine decay to 0), in (0, 10].
            1e-4 is the fine-tuning rate of torchvision's QAT reference recipe.
        batch: training batch size, 1..4096.
        device: ``auto|cpu|cuda|cuda:N`` (:func:`edgekit.device.resolve_device`).
        weight_decay: L2 on the weights; 0 by default, because after BN folding the
            convolution weights are no longer scale-invariant and decay would shrink
            the outputs.
        seed: seed of the batch order and the augmentation.
        init_per_class: calibration images per class that initialise the observers.
        reduce_range: 7-bit weights (-64..63), as ``ort-cpu-int8`` deploys by default,
            so no weight pair can saturate int16 on an x86 CPU without VNNI
            (:mod:`edgekit.isa`); False: full-range 8-bit weights, which rely on VNNI.
        distill: weight alpha in [0, 1] of logits distillation from the FP32 model
            (Hinton et al. 2015, :func:`edgekit.train.kd_loss`, temperature
            ``temperature``); 0 trains on the labels alone. A pretrained model already
            fits its training labels (cross-entropy near 0.01 from the first step), so the
            labels carry little signal about the quantization error; the FP32 teacher's
            soft outputs do (QAT with distillation: Mishra & Marr 2018, "Apprentice";
            Kim et al. 2019, "QKD").
        temperature: distillation temperature T > 0.
        observer_fraction: the observers update during this first fraction of the
            steps, then are frozen (``disable_observer``) so the last part trains with
            the scales that are exported; in [0, 1]. With ``activation_ranges =
            "calibrated"`` only the weight observers update.
        activation_ranges: ``"calibrated"`` (default): every scale is computed once,
            as ``ort-cpu-int8``'s PTQ computes it, and then frozen while the weights
            fine-tune: each activation's range is the global min/max over the
            calibration images (ONNX Runtime's MinMax calibration), each weight's the
            per-output-channel max of the pretrained weights. QAT thus starts from the
            deployed PTQ model and moves only the weights (the QAT workflow of NVIDIA's
            TensorRT Model Optimizer: calibrate with ``mtq.quantize``, then fine-tune with
            the quantizers' scales frozen; Wu et al. 2020, "Integer Quantization for Deep
            Learning Inference: Principles and Empirical Evaluation", likewise start QAT
            from the calibrated model). ``observer_fraction`` is then unused.
            ``"moving"``: moving-average min/max observers, initialised on the calibration
            images and updated on the training batches for ``observer_fraction`` of the
            steps (PyTorch's QAT reference recipe; edgekit's behaviour before this option).
    """

    epochs: float = 2.0
    steps: int | None = None
    lr: float = 1e-4
    batch: int = 128
    device: str | None = None
    weight_decay: float = 0.0
    seed: int = 0
    init_per_class: int = 32
    reduce_range: bool = True
    observer_fraction: float = 0.5
    distill: float = 0.0
    temperature: float = 4.0
    activation_ranges: str = "calibrated"

    def check(self) -> None:
        """Raises EdgekitError for a value out of range (before any heavy work)."""

        def bad(opt, v, rng):
            raise EdgekitError(f"{opt} = {v!r} is out of range", f"use a value in {rng}")

        if not (isinstance(self.epochs, (int, float)) and 0 < self.epochs <= 100):
            bad("--epochs", self.epochs, "(0, 100]")
        if self.steps is not None and not (isinstance(self.steps, int) and self.steps >= 1):
            bad("--steps", self.steps, "1 or more")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr <= 10) or math.isnan(self.lr):
            bad("--lr", self.lr, "(0, 10]")
        if not (isinstance(self.batch, int) and 1 <= self.batch <= 4096):
            bad("--batch", self.batch, "1..4096")
        f = self.observer_fraction
        if not (isinstance(f, (int, float)) and 0 <= f <= 1):
            bad("observer_fraction", f, "[0, 1]")
        if not (isinstance(self.distill, (int, float)) and 0 <= self.distill <= 1):
            bad("--distill", self.distill, "[0, 1]")
        t = self.temperature
        if not (isinstance(t, (int, float)) and 0 < t <= 100):
            bad("--temperature", t, "(0, 100]")
        if self.activation_ranges not in ACTIVATION_RANGES:
            raise EdgekitError(
                f"--activation-ranges {self.activation_ranges!r} is not one of "
                + ", ".join(ACTIVATION_RANGES),
                "use --activation-ranges calibrated (fixed PTQ ranges) or moving",
            )


#: ``QatConfig.activation_ranges`` values: fixed calibrated min/max, or moving average.
ACTIVATION_RANGES = ("calibrated", "moving")


#: Symmetric weight range: 7-bit with ``reduce_range`` (as ONNX Runtime's quantizer and
#: torch's observers reduce it), else full 8-bit.
WEIGHT_RANGE = {True: (-64, 63), False: (-128, 127)}


def qconfig_mapping(reduce_range: bool = True, activation_ranges: str = "calibrated"):
    """The QConfigMapping of the deployed ``ort-cpu-int8`` scheme (see the module doc).

    Args:
        reduce_range: 7-bit weights (quant_min -64, quant_max 63), else -128..127.
        activation_ranges: ``"calibrated"``: ``MinMaxObserver`` (global min/max, as ONNX
            Runtime's MinMax calibrator); ``"moving"``: ``MovingAverageMinMaxObserver``.
    """
    import torch
    from torch.ao.quantization import (
        FakeQuantize,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        QConfig,
        QConfigMapping,
    )

    act = FakeQuantize.with_args(
        observer=MinMaxObserver
        if activation_ranges == "calibrated"
        else MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    qmin, qmax = WEIGHT_RANGE[bool(reduce_range)]
    weight = FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=qmin,
        quant_max=qmax,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    return QConfigMapping().set_global(QConfig(activation=act, weight=weight))


@contextlib.contextmanager
def _quiet():
    """Silence torch.ao's deprecation and the exporter's warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def prepare(model, example, reduce_range: bool = True, activation_ranges: str = "calibrated"):
    """BN-folded, fake-quantized FX copy of ``model`` (in train mode).

    Args:
        model: a float ``nn.Module`` (eval mode: BN statistics are folded as they are).
        example: float32 [N, C, H, W] example input (a tensor).
        reduce_range: 7-bit weights (see :func:`qconfig_mapping`).
        activation_ranges: see :func:`qconfig_mapping`.

    Raises:
        EdgekitError: the model cannot be traced by torch.fx.
    """
    from torch.ao.quantization.quantize_fx import fuse_fx, prepare_qat_fx

    model = model.eval()
    try:
        with _quiet():
            fused = fuse_fx(model)
            qmap = qconfig_mapping(reduce_range, activation_ranges)
            return prepare_qat_fx(fused.train(), qmap, (example,))
    except Exception as e:  # symbolic tracing fails on data-dependent control flow
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgekitError(
            f"QAT: torch.fx cannot trace the model: {first}",
            "QAT needs a model without data-dependent Python control flow",
        ) from None


def freeze(qmodel) -> None:
    """Stop the observers (the scales stay as learned) and switch to eval mode."""
    from torch.ao.quantization import disable_observer

    qmodel.apply(disable_observer)
    qmodel.eval()


def widen_weight_ranges(qmodel) -> int:
    """Make each reduced-range weight quantizer exportable (in place); return how many.

    The TorchScript exporter accepts only the full ranges -128..127 and 0..255. A
    symmetric quantizer with range ``qmin..qmax`` and scale ``s`` gives the same output
    as the -128..127 one with the same scale once the float weight is clamped to
    ``[qmin * s, qmax * s]``; so the weight is clamped per output channel and the range
    widened, and the exported INT8 weights still lie in ``qmin..qmax``. Call after
    :func:`freeze` (the scales must no longer move).
    """
    import torch

    count = 0
    for mod in qmodel.modules():
        fq = getattr(mod, "weight_fake_quant", None)
        w = getattr(mod, "weight", None)
        if fq is None or w is None or (fq.quant_min, fq.quant_max) == (-128, 127):
            continue
        if fq.qscheme not in (torch.per_channel_symmetric, torch.per_tensor_symmetric):
            raise EdgekitError("QAT: only symmetric weight quantizers can be exported")
        shape = [1] * w.dim()
        if fq.scale.numel() > 1:
            shape[fq.ch_axis] = fq.scale.numel()
        s = fq.scale.detach().reshape(shape).to(w.device, w.dtype)
        with torch.no_grad():
            w.copy_(torch.minimum(torch.maximum(w, s * fq.quant_min), s * fq.quant_max))
        fq.quant_min, fq.quant_max = -128, 127
        if hasattr(fq, "activation_post_process"):
            fq.activation_post_process.quant_min = -128
            fq.activation_post_process.quant_max = 127
        count += 1
    return count


def scalar_qparams(model) -> int:
    """Make per-tensor Q/DQ scales and zero points 0-d (in place); return how many.

    The TorchScript exporter writes a FakeQuantize's 1-element ``scale``/``zero_point``
    buffers as shape-[1] constants; ONNX Runtime's QLinear kernels require scalars.
    """
    from onnx import numpy_helper

    qdq = ("QuantizeLinear", "DequantizeLinear")
    per_tensor = set()
    for n in model.graph.node:
        if n.op_type in qdq and not any(a.name == "axis" for a in n.attribute):
            per_tensor.update(n.input[1:3])
    count = 0
    for t in model.graph.initializer:
        if t.name in per_tensor and list(t.dims) == [1]:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(()), t.name))
            count += 1
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] in per_tensor:
            for a in n.attribute:
                if a.name == "value" and list(a.t.dims) == [1]:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).reshape(())))
                    count += 1
    return count


def fold_weight_quantizers(model) -> int:
    """Replace ``QuantizeLinear`` of a constant weight by its INT8 initializer (in place).

    The exporter writes ``DequantizeLinear(QuantizeLinear(W_float))`` (the weight
    sometimes behind an ``Identity``); storing the quantized tensor instead makes the
    file ~4x smaller and is the form ONNX Runtime's own quantizer writes. Rounding is
    half to even, as ``QuantizeLinear`` specifies. Unused Identity nodes and
    initializers are removed afterwards.

    Returns:
        The number of weights folded.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = {
        n.output[0]: a.t
        for n in g.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    }
    identity = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}

    def source(name):
        while name in identity:
            name = identity[name]
        return name

    def value(name):
        name = source(name)
        t = inits.get(name) or consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    folded = []
    for n in g.node:
        if n.op_type != "QuantizeLinear" or source(n.input[0]) not in inits:
            continue
        w, scale, zp = value(n.input[0]), value(n.input[1]), value(n.input[2])
        if scale is None or zp is None:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = scale.size
        info = np.iinfo(zp.dtype)
        q = np.rint(w / scale.reshape(shape)) + zp.astype(np.int64).reshape(shape)
        g.initializer.append(
            numpy_helper.from_array(np.clip(q, info.min, info.max).astype(zp.dtype), n.output[0])
        )
        folded.append(n)
    for n in folded:
        g.node.remove(n)
    while True:  # drop what nothing reads any more
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [
            n for n in g.node if n.op_type in ("Identity", "Constant") and n.output[0] not in used
        ]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return len(folded)


def export_qdq(qmodel, example, path: Path) -> dict:
    """Export the frozen fake-quantized model to a Q/DQ ONNX at ``path``.

    Returns:
        ``{"quantize_linear": count, "dequantize_linear": count, "opset": OPSET}``.
    """
    import onnx
    import torch

    freeze(qmodel)
    qmodel = qmodel.cpu()
    widen_weight_ranges(qmodel)
    tmp = Path(path).with_suffix(".raw.onnx")
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            qmodel,
            (example.cpu(),),
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    m = onnx.load(str(tmp))
    tmp.unlink()
    scalar_qparams(m)
    folded = fold_weight_quantizers(m)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    ops = [n.op_type for n in m.graph.node]
    return {
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "int8_weights": folded,
        "opset": OPSET,
    }


def fine_tune(qmodel, split, preprocess, cfg: QatConfig, device, log=None, teacher=None) -> dict:
    """SGD fine-tuning of the fake-quantized model on uint8 [N, H, W, 3] images.

    Augmentation: random crop (padding 4) and horizontal flip
    (:func:`edgekit.augment.random_crop_flip`), as the CIFAR models were trained;
    cross-entropy without label smoothing; cosine learning rate from ``cfg.lr`` to 0.
    With ``cfg.activation_ranges = "moving"`` the observers are frozen after
    ``cfg.observer_fraction`` of the steps (torchvision's QAT reference recipe freezes them
    part-way too); with ``"calibrated"`` they are left as the caller set them
    (:func:`run_qat` freezes them after :func:`init_observers`). BatchNorm is already folded into
    the convolutions with the pretrained statistics (:func:`prepare`), which is
    ``freeze_bn_stats`` from the first step. With ``teacher`` (the FP32 model, eval
    mode) and ``cfg.distill`` > 0, the loss is :func:`edgekit.train.kd_loss`.

    Returns:
        ``{"steps", "epochs", "seconds", "seconds_per_step", "loss_first", "loss_last",
        "observers_frozen_at"}``.
    """
    import torch
    import torch.nn.functional as F

    from edgekit.augment import random_crop_flip
    from edgekit.train import kd_loss

    n = len(split.y)
    per_epoch = max(1, n // cfg.batch)
    total = max(1, int(round(cfg.epochs * per_epoch)))
    if cfg.steps is not None:
        total = min(total, cfg.steps)
    params = [p for p in qmodel.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=device)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=device)
    from torch.ao.quantization import disable_observer

    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    # "calibrated": the caller froze the PTQ scales already (run_qat); leave them alone
    calibrated = cfg.activation_ranges == "calibrated"
    frozen_at = 0 if calibrated else int(round(cfg.observer_fraction * total))
    qmodel.train()
    losses, t0, step = [], time.perf_counter(), 0
    while step < total:
        order = torch.randperm(n, generator=gen).numpy()
        for i in range(0, n - cfg.batch + 1, cfg.batch):
            if step >= total:
                break
            if step == frozen_at and not calibrated:
                qmodel.apply(disable_observer)
            idx = np.sort(order[i : i + cfg.batch])
            xb = torch.from_numpy(split.x[idx]).to(device).permute(0, 3, 1, 2)
            xb = random_crop_flip(xb, 4, True, gen)
            xb = (xb.float() / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
            yb = torch.from_numpy(np.asarray(split.y[idx], np.int64)).to(device)
            out = qmodel(xb)
            if teacher is not None and cfg.distill > 0:
                with torch.no_grad():
                    t_out = teacher(xb)
                loss = kd_loss(out, t_out, yb, cfg.distill, cfg.temperature)
            else:
                loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
            step += 1
            if log and (step == 1 or step % 50 == 0 or step == total):
                el = time.perf_counter() - t0
                log(f"QAT step {step}/{total}: loss {np.mean(losses[-50:]):.4f}, {el:.0f} s")
    secs = time.perf_counter() - t0
    return {
        "steps": step,
        "steps_per_epoch": per_epoch,
        "epochs": round(step / per_epoch, 4),
        "seconds": round(secs, 1),
        "seconds_per_step": round(secs / max(1, step), 4),
        "loss_first": round(float(np.mean(losses[:20])), 4) if losses else None,
        "loss_last": round(float(np.mean(losses[-20:])), 4) if losses else None,
        "observers_frozen_at": frozen_at,
    }


def init_observers(qmodel, x: np.ndarray, device, batch: int = 64) -> None:
    """Run the calibration images through the model in eval mode, observers on, so the
    activation ranges start from the data rather than from the first training batch."""
    import torch

    qmodel.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            qmodel(torch.from_numpy(x[i : i + batch]).to(device))
    qmodel.train()


def torch_top1(model, split, preprocess, device, batch: int = 250) -> tuple[float, np.ndarray]:
    """Top-1 (percent) and predictions of a torch model on a uint8 split."""
    import torch

    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(split.y), batch):
            xb = torch.from_numpy(preprocess.apply(split.x[i : i + batch])).to(device)
            preds.append(model(xb).argmax(1).cpu().numpy())
    p = np.concatenate(preds)
    return float((p == split.y).mean() * 100), p


def ort_top1(path: Path, split, preprocess, batch: int = 250) -> tuple[float, np.ndarray]:
    """Top-1 (percent) and predictions of an ONNX model in ONNX Runtime (CPU, 1 thread)."""
    from edgekit.accuracy_control import logits, session

    sess = session(path, 1)
    preds = [
        logits(sess, preprocess.apply(split.x[i : i + batch])).argmax(1)
        for i in range(0, len(split.y), batch)
    ]
    p = np.concatenate(preds)
    return float((p == split.y).mean() * 100), p


def qat_target(reduce_range: bool = True):
    """The :class:`Target` recorded in the artifact's manifest."""
    from edgekit.backends import get_backend
    from edgekit.targets import Target

    opts = get_backend("onnxruntime").resolve_options(
        "int8",
        {"quant_format": "QDQ", "per_channel": True, "activation_type": "QUInt8",
         "weight_type": "QInt8", "strip_names": False, "reduce_range": bool(reduce_range)},
        TARGET,
    )  # fmt: skip
    return Target(
        name=TARGET,
        backend="onnxruntime",
        precision="int8",
        description="ONNX Runtime INT8 Q/DQ from quantization-aware training (edgekit qat)",
        options=opts,
        requires={"device": "cpu"},
    )


def run_qat(ws, ctx, test_split, cfg: QatConfig, force: bool = False, log=None) -> dict:
    """``edgekit qat``: fine-tune, export, check in ONNX Runtime, write the artifact.

    The test split is used only to record the fake-quantized PyTorch top-1 and the
    ONNX Runtime top-1 of the same model side by side (no choice is made on it).

    Returns:
        The artifact's manifest; ``quantization.qat`` holds the settings, the training
        record, ``torch_top1``, ``ort_top1``, their prediction agreement and test count.

    Raises:
        EdgekitError: bad settings, an existing artifact without ``force``, an untraceable model.
    """
    import torch

    from edgekit.backends.base import onnx_io
    from edgekit.build import source_record
    from edgekit.channel_pad import pad_input_channels
    from edgekit.device import resolve_device
    from edgekit.fileio import atomic_dir
    from edgekit.isa import isa_record
    from edgekit.manifest import make_manifest, write_manifest
    from edgekit.saturation import risky_weight_pairs

    cfg.check()
    out = ws.artifact_dir(TARGET)
    if (out.exists() or out.is_symlink()) and not force:
        raise EdgekitError(f"{out} already exists", "pass --force to overwrite it")
    device = resolve_device(cfg.device)
    xc, _, calib = ctx.calibration_for(TARGET, cfg.init_per_class)
    model = ctx.torch_model()
    example = torch.from_numpy(xc[:2])
    teacher = None
    if cfg.distill > 0:
        import copy

        teacher = copy.deepcopy(model).eval().to(device)
    q = prepare(model, example, cfg.reduce_range, cfg.activation_ranges).to(device)
    init_observers(q, xc, device)
    if cfg.activation_ranges == "calibrated":
        from torch.ao.quantization import disable_observer

        q.apply(disable_observer)  # the PTQ scales, frozen from the first step
    log and log(f"QAT: {cfg.epochs} epoch(s) at most {cfg.steps or '-'} steps on {device}")
    with _quiet():
        hist = fine_tune(q, ctx.calib_split, ctx.preprocess, cfg, device, log, teacher)
    freeze(q)
    with _quiet():
        t_top1, t_pred = torch_top1(q, test_split, ctx.preprocess, device)
    with atomic_dir(out, force=force) as tmp:
        t0 = time.perf_counter()
        qrec = export_qdq(q, example, tmp / "model.onnx")
        # the same input-channel pad as ort-cpu-int8 builds (bit-identical outputs)
        channel_pad = pad_input_channels(tmp / "model.onnx")
        risky = risky_weight_pairs(tmp / "model.onnx")["risky"]
        o_top1, o_pred = ort_top1(tmp / "model.onnx", test_split, ctx.preprocess)
        qrec.update(
            {
                "method": "FX QAT (torch.ao.quantization.quantize_fx), BN folded, STE",
                "weights": "int8 per-channel symmetric, "
                + ("7-bit (-64..63, reduce_range)" if cfg.reduce_range else "full 8-bit"),
                "activations": "uint8 per-tensor affine",
                "config": asdict(cfg),
                "training": hist,
                "torch_top1": round(t_top1, 4),
                "ort_top1": round(o_top1, 4),
                "agreement": round(float((t_pred == o_pred).mean() * 100), 4),
                "test_images": int(len(test_split.y)),
            }
        )
        calib = {
            **calib,
            "method": "minmax (as ort-cpu-int8), scales frozen, weights fine-tuned"
            if cfg.activation_ranges == "calibrated"
            else "QAT observers (moving-average min/max), then fine-tuned",
        }
        target = qat_target(cfg.reduce_range)
        manifest = make_manifest(
            target=target.to_dict(),
            artifact="model.onnx",
            artifact_dir=tmp,
            io=onnx_io(tmp / "model.onnx"),
            preprocess=ctx.preprocess.to_dict(),
            classes=list(ctx.classes),
            source=source_record(ctx),
            calibration=calib,
            extra={
                "quantization": {
                    "tool": "edgekit.qat",
                    "fp32_nodes": [],
                    "qat": qrec,
                    "input_channel_pad": channel_pad,
                },
                "isa": isa_record(target.options, risky),
                "build_seconds": round(hist["seconds"] + time.perf_counter() - t0, 3),
            },
        )
        write_manifest(tmp, manifest)
    return manifest
