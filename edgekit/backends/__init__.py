"""Backends: one module each, behind one protocol (:mod:`edgekit.backends.base`).

A backend module imports its runtime (torch, onnxruntime, tensorrt) inside its
functions only, so listing targets and ``--help`` stay light, and the runtime
install can open ONNX Runtime artifacts without torch.
"""

from __future__ import annotations

import importlib

from edgekit.backends.base import Backend, BuildContext, BuildResult, Runner
from edgekit.errors import EdgekitError

#: backend name -> module path (each module defines ``BACKEND``).
BACKENDS = {
    "pytorch": "edgekit.backends.pytorch",
    "onnxruntime": "edgekit.backends.onnxruntime",
    "torchscript": "edgekit.backends.torchscript",
    "tensorrt": "edgekit.backends.tensorrt",
    "openvino": "edgekit.backends.openvino",
    "executorch": "edgekit.backends.executorch",
}


def get_backend(name: str, where: str = "") -> Backend:
    """Return the backend object named ``name``.

    Raises:
        EdgekitError: unknown backend.
    """
    if name not in BACKENDS:
        prefix = f"{where}: " if where else ""
        raise EdgekitError(f"{prefix}unknown backend {name!r}", f"use one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ModuleNotFoundError as e:
        if e.name != BACKENDS[name]:
            raise
        raise EdgekitError(
            f"backend {name!r} is not part of this edgekit install", "upgrade edgekit"
        ) from None
    return module.BACKEND


__all__ = ["BACKENDS", "Backend", "BuildContext", "BuildResult", "Runner", "get_backend"]
