"""ExecuTorch backend: ``et-xnnpack-int8``, PyTorch's supported edge path.

Build (ExecuTorch docs, "Building and Running ExecuTorch with XNNPACK Backend"; PT2E
quantization from torchao, the successor of ``torch.ao.quantization`` FX):

1. ``torch.export.export`` of the FP32 model at batch 1;
2. ``prepare_pt2e`` with ExecuTorch's ``XNNPACKQuantizer`` (symmetric INT8,
   per-channel weights, per-tensor activations), calibration on the same
   class-balanced training images as every INT8 target, ``convert_pt2e``;
3. ``torch.export`` again and ``to_edge_transform_and_lower`` with the
   ``XnnpackPartitioner``, then ``to_executorch``: a ``model.pte`` whose quantized
   subgraphs are delegated to XNNPACK.

The runner loads the ``.pte`` with ``executorch.runtime`` (its Python bindings import
torch, so this target runs on a build-host-like install, not in the torch-free
device install). A ``.pte`` without the XNNPACK delegate, or a runtime without the
``XnnpackBackend``, is refused at load with the reason. The program is exported at a
static batch of 1 (``io.batch`` min = max = 1): the harness feeds it image by image.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from edgekit.backends.base import Backend, BuildContext, BuildResult
from edgekit.errors import EdgekitError
from edgekit.manifest import artifact_path
from edgekit.schema import Bool, Int

ARTIFACT = "model.pte"
DELEGATE = "XnnpackBackend"
INSTALL = "pip install 'edgekit-toolchain[executorch]' (Python >= 3.11, torch 2.13)"


@contextlib.contextmanager
def quiet():
    """Silence torch.export / torchao / ExecuTorch warnings and the C++ log lines."""
    import logging

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(level)


def delegate_problem(data: bytes) -> str | None:
    """Why a ``.pte`` (its bytes) is not an XNNPACK-delegated program; None if it is.

    The delegate's id is a plain string in the program's flatbuffer.
    """
    if data[4:6] != b"ET":  # the flatbuffer file identifier, "ET12" in ExecuTorch 1.x
        return "it is not an ExecuTorch program (.pte)"
    if DELEGATE.encode() not in data:
        return f"it has no {DELEGATE} delegate (lowered without the XNNPACK partitioner)"
    return None


class ExecuTorchRunner:
    """An ExecuTorch ``forward`` method behind the :class:`Runner` protocol.

    Maps float32 [1, C, H, W] to float32 [1, classes] (static batch 1).
    """

    device = "cpu"
    batch_range = (1, 1)

    def __init__(self, path: Path, manifest: dict, threads: int | None):
        problem = delegate_problem(path.read_bytes())
        if problem:
            raise EdgekitError(
                f"cannot load {path}: {problem}", "rebuild it with edgekit build --force"
            )
        import torch

        with quiet():
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime

            rt = Runtime.get()
            if not rt.backend_registry.is_available(DELEGATE):
                raise EdgekitError(
                    f"cannot load {path}: this ExecuTorch runtime has no {DELEGATE} "
                    f"(it has {', '.join(rt.backend_registry.registered_backend_names)})",
                    INSTALL,
                )
            if threads:
                portable_lib._unsafe_reset_threadpool(int(threads))
            try:
                self.method = rt.load_program(str(path)).load_method("forward")
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise EdgekitError(f"ExecuTorch cannot load {path}: {first}") from None
        self.torch = torch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.method.execute([self.torch.from_numpy(np.ascontiguousarray(x))])
        return out[0].numpy().astype(np.float32, copy=True)

    def close(self) -> None:
        self.method = None


def lower_xnnpack_int8(model, x: np.ndarray, per_channel: bool):
    """PT2E INT8 with the XNNPACK quantizer, lowered to an ExecuTorch program.

    Args:
        model: FP32 ``torch.nn.Module`` in eval mode.
        x: float32 [K, C, H, W] calibration images (fed one at a time).

    Returns:
        ``(program bytes, record)``; the record counts delegated call sites.
    """
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = (torch.from_numpy(np.ascontiguousarray(x[:1])),)
    with quiet(), torch.no_grad():
        graph = torch.export.export(model, example).module()
        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=per_channel)
        )
        prepared = prepare_pt2e(graph, quantizer)
        for i in range(len(x)):
            prepared(torch.from_numpy(np.ascontiguousarray(x[i : i + 1])))
        converted = convert_pt2e(prepared)
        edge = to_edge_transform_and_lower(
            torch.export.export(converted, example), partitioner=[XnnpackPartitioner()]
        )
        gm = edge.exported_program().graph_module
        delegated = sum(
            1 for n in gm.graph.nodes if n.target is torch.ops.higher_order.executorch_call_delegate
        )
        leftover = sorted(
            {
                getattr(n.target, "__name__", str(n.target)).split("(")[0]
                for n in gm.graph.nodes
                if n.op == "call_function"
                and n.target is not torch.ops.higher_order.executorch_call_delegate
                and "getitem" not in str(n.target)
            }
        )
        program = edge.to_executorch()
    return program.buffer, {"delegate_calls": delegated, "ops_outside_delegate": leftover}


class ExecuTorchBackend(Backend):
    name = "executorch"
    # executorch is a namespace package: its runtime and exir subpackages are what exist
    packages = ("torch", "executorch.runtime", "executorch.exir", "torchao")
    install_hint = INSTALL
    option_defaults = {"int8": {"calib_per_class": 32, "per_channel": True}}
    option_specs = {"calib_per_class": Int(min=1, max=100_000), "per_channel": Bool()}

    def build(self, ctx: BuildContext, target, out_dir: Path) -> BuildResult:
        """Export, quantize (PT2E, XNNPACK quantizer) and lower ``ctx.torch_model()``.

        Raises:
            EdgekitError: no checkpoint; too few calibration images; torch.export,
                the quantizer or the XNNPACK lowering failing (first line).
        """
        opts = target.options
        model = ctx.torch_model()
        x, _, calib = ctx.calibration_for(target.name, opts["calib_per_class"])
        try:
            data, rec = lower_xnnpack_int8(model, x, bool(opts["per_channel"]))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgekitError(
                f"{target.name}: ExecuTorch lowering failed: {first}",
                "the model must be torch.export-able; use ts-fx-int8 or ort-cpu-int8 instead",
            ) from None
        (out_dir / ARTIFACT).write_bytes(data)
        c, h, w = x.shape[1:]
        calib["method"] = "PT2E MinMax (XNNPACKQuantizer, symmetric)"
        calib["batch"] = 1
        io = {
            "input": "x",
            "output": "logits",
            "input_shape": [1, int(c), int(h), int(w)],
            "output_shape": [1, len(ctx.classes)],
            "dtype": "float32",
            "batch": {"min": 1, "max": 1},
        }
        quant = {
            "tool": "torchao.quantization.pt2e (prepare_pt2e/convert_pt2e)",
            "quantizer": "XNNPACKQuantizer",
            "delegate": DELEGATE,
            **rec,
        }
        return BuildResult(
            artifact=ARTIFACT, io=io, calibration=calib, extra={"quantization": quant}
        )

    def verify_artifact(self, artifact_dir: Path, manifest: dict) -> None:
        """Refuse a ``.pte`` that is not an XNNPACK-delegated ExecuTorch program.

        Raises:
            EdgekitError: not a ``.pte``, or no XNNPACK delegate in it.
        """
        path = artifact_path(artifact_dir, manifest)
        problem = delegate_problem(path.read_bytes())
        if problem:
            raise EdgekitError(
                f"{artifact_dir}: {manifest['artifact']}: {problem}",
                "rebuild the artifact with edgekit build --force",
            )

    def load(self, artifact_dir: Path, manifest: dict, threads: int | None) -> ExecuTorchRunner:
        return ExecuTorchRunner(artifact_path(artifact_dir, manifest), manifest, threads)


BACKEND = ExecuTorchBackend()
