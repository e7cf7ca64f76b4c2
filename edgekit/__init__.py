"""edgekit: from a PyTorch classifier to measured edge artifacts.

The pipeline, one module per step:

``data`` -> ``models`` / ``train`` / ``prune`` -> ``export`` (ONNX) ->
``targets`` + ``backends`` (one artifact per target, described by a ``manifest``) ->
``harness`` (one uniform benchmark) -> ``report``.

Importing ``edgekit`` imports nothing heavy: torch, onnx, onnxruntime and
TensorRT are imported by the functions that need them.
"""

import sys
import types

from edgekit._meta import DIST_NAME, __version__

#: The Python API (:mod:`edgekit.api`), imported on first use so that ``import edgekit``
#: stays cheap and imports no torch.
_API = (
    "export",
    "build",
    "benchmark",
    "compare",
    "run",
    "ExportResult",
    "BuildResult",
    "Artifact",
    "BenchmarkResult",
    "CompareResult",
)

__all__ = ["DIST_NAME", "__version__", *_API]


class _Package(types.ModuleType):
    """``edgekit`` itself: the API names win over the submodules of the same name.

    ``edgekit.export``, ``edgekit.build`` and ``edgekit.compare`` are also modules
    (the ONNX export, the builder, the comparator). Importing a submodule normally
    binds it on the package and would hide the API function; here that binding is
    skipped, so ``edgekit.export(...)`` is always the function. The modules stay
    importable as always (``from edgekit.export import export_onnx``).
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _API:
        from edgekit import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
