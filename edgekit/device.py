"""The ``--device`` choice of training, pruning and the pipeline: ``auto|cpu|cuda|cuda:N``.

``auto`` (or nothing) picks the first CUDA GPU when ``torch.cuda.is_available()`` and
the CPU otherwise. A CUDA request that cannot be met is a user error
(:class:`edgekit.errors.EdgekitError`, one line and exit 2 from the CLI), never a
traceback from deep inside torch.
"""

from __future__ import annotations

import re

from edgekit.errors import EdgekitError

DEVICE_HELP = "auto (CUDA when torch sees a GPU, else CPU) | cpu | cuda | cuda:N."
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(spec: str | None):
    """``auto|cpu|cuda|cuda:N`` (case-insensitive; None = auto) -> a ``torch.device``.

    Returns:
        ``torch.device("cpu")``, or ``torch.device("cuda", index)`` with a concrete index
        (``cuda`` means the current CUDA device, normally 0).

    Raises:
        EdgekitError: a malformed spec; ``cuda`` when no CUDA GPU is visible to torch;
            ``cuda:N`` with N >= the number of visible GPUs (the count is named).
    """
    import torch

    text = (spec or "auto").strip().lower()
    m = _SPEC.match(text)
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise EdgekitError(
            f"--device {spec!r} is not a device", "use auto, cpu, cuda or cuda:N (e.g. cuda:0)"
        )
    kind, index = m.group(1), m.group(2)
    if kind == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if _has_cuda()
            else (torch.device("cpu"))
        )
    if kind == "cpu":
        return torch.device("cpu")
    if not _has_cuda():
        raise EdgekitError(
            f"--device {text}: no CUDA GPU is visible to torch "
            "(torch.cuda.is_available() is False)",
            "use --device cpu or auto",
        )
    count = torch.cuda.device_count()
    i = torch.cuda.current_device() if index is None else int(index)
    if i >= count:
        raise EdgekitError(
            f"--device {text}: there is no CUDA device {i}; torch sees {count} GPU(s) "
            f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})",
            "pick an index below the count, or check CUDA_VISIBLE_DEVICES",
        )
    return torch.device("cuda", i)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def device_name(device) -> str:
    """A readable name for records: ``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
