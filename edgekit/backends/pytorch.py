"""PyTorch eager FP32: the baseline row every report is measured against.

The artifact is an edgekit checkpoint (``model.pt``, loaded with
``weights_only=True``), so the baseline goes through the same harness as every
other target.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgekit.backends.base import Backend, BuildContext, BuildResult
from edgekit.errors import EdgekitError
from edgekit.manifest import artifact_path

ARTIFACT = "model.pt"


class TorchRunner:
    """An eager ``nn.Module`` in eval mode under ``torch.inference_mode``."""

    device = "cpu"
    batch_range = (1, None)

    def __init__(self, path: Path, threads: int | None):
        import torch

        from edgekit.models import load_model

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model, _ = load_model(None, path, None)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()

    def close(self) -> None:
        self.model = None


def _out_features(model) -> int | None:
    """The output width of the model's last ``nn.Linear`` (the classes), if it has one."""
    import torch

    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return int(last[-1].out_features) if last else None


class PyTorchBackend(Backend):
    name = "pytorch"
    packages = ("torch",)
    install_hint = "pip install 'edgekit-toolchain[build]'"
    option_defaults = {"fp32": {}}

    def build(self, ctx: BuildContext, target, out_dir: Path) -> BuildResult:
        if ctx.checkpoint_path is None:
            from edgekit.errors import UnavailableError

            raise UnavailableError(
                "the PyTorch baseline needs the model as an edgekit checkpoint (WORK/model.pt); "
                "an in-memory model has none",
                "export a named model (zoo name or package.module:factory) with its weights",
            )
        from edgekit.fileio import require_file

        require_file(ctx.checkpoint_path, "checkpoint")
        # load it as a runner will (weights_only, metadata, trusted model, finite weights),
        # so a corrupt or foreign WORK/model.pt is refused here, not built into an artifact
        model = ctx.torch_model()
        n_out = getattr(model, "num_classes", None) or _out_features(model)
        if n_out is not None and n_out != len(ctx.classes):
            raise EdgekitError(
                f"{ctx.checkpoint_path} has {n_out} classes but the work directory has "
                f"{len(ctx.classes)} class names",
                "re-create the work directory with: edgekit export --force",
            )
        shutil.copyfile(ctx.checkpoint_path, out_dir / ARTIFACT)
        h, w = ctx.preprocess.height, ctx.preprocess.width
        io = {
            "input": "input",
            "output": "logits",
            "input_shape": ["batch", 3, h, w],
            "output_shape": ["batch", len(ctx.classes)],
            "dtype": "float32",
            "batch": None,
        }
        return BuildResult(artifact=ARTIFACT, io=io)

    def verify_artifact(self, artifact_dir: Path, manifest: dict) -> None:
        """Check the checkpoint's metadata before any process loads it.

        The checkpoint is read with ``weights_only=True``; its metadata must be
        well-typed and its model a zoo model or one the user named
        (:func:`edgekit.models.check_model_trusted`), so ``bench`` refuses a
        checkpoint naming ``os:abort`` up front, with exit status 2.

        Raises:
            EdgekitError: not an edgekit checkpoint, malformed metadata, or a model
                factory named only by the file.
        """
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return  # runtime_unavailable_reason says torch is missing
        from edgekit.models import (
            CHECKPOINT_FORMAT,
            check_checkpoint_meta,
            check_model_trusted,
            read_checkpoint,
        )

        path = artifact_path(artifact_dir, manifest)
        obj = read_checkpoint(path)
        if obj.get("format") != CHECKPOINT_FORMAT:
            raise EdgekitError(
                f"{path} is not an edgekit checkpoint", "rebuild the artifact with edgekit build"
            )
        check_checkpoint_meta(obj, str(path))
        check_model_trusted(obj["model"], str(path))

    def load(self, artifact_dir: Path, manifest: dict, threads: int | None) -> TorchRunner:
        return TorchRunner(artifact_path(artifact_dir, manifest), threads)


BACKEND = PyTorchBackend()
