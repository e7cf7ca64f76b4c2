"""edgekit: from a PyTorch classifier to measured edge artifacts.

The pipeline, one module per step:

``data`` -> ``models`` / ``train`` / ``prune`` -> ``export`` (ONNX) ->
``targets`` + ``backends`` (one artifact per target, described by a ``manifest``) ->
``harness`` (one uniform benchmark) -> ``report``.

Importing ``edgekit`` imports nothing heavy: torch, onnx, onnxruntime and
TensorRT are imported by the functions that need them.
"""

__version__ = "0.1.0"

#: The distribution name on the package index (the import name and the CLI stay ``edgekit``:
#: the index's ``edgekit`` is an unrelated project).
DIST_NAME = "edgekit-toolchain"
