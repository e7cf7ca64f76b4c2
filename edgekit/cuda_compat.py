"""Which CUDA major version each GPU package is built for, and whether they agree.

One process can load only one CUDA major's runtime libraries sensibly: CuPy for CUDA
12 next to an ONNX Runtime built for CUDA 13 fails at the first kernel or silently
falls back to the CPU. This module names the CUDA major (an ``int``: 12, 13, ...) of a
distribution from its name and version alone, without importing it:

- ``cupy-cuda12x`` / ``cupy-cuda13x``: the digits in the name;
- ``nvidia-*-cu12`` / ``nvidia-*-cu13``, ``tensorrt-cu12*`` / ``tensorrt-cu13*``: the suffix;
- ``cuda-toolkit`` (and ``nvidia-cuda-runtime``): the version's major;
- ``onnxruntime-gpu``: from 1.28 on, the package index's builds are for CUDA 13, before
  that for CUDA 12 (ONNX Runtime's release notes; NVIDIA's Jetson index builds
  differ, so on aarch64 the major is unknown);
- ``torch``: a ``+cuXYZ`` local version, else ``cuda = '13.0'`` in the installed
  ``torch/version.py`` (read as text, torch is not imported).

The same rules check ``pyproject.toml``'s extras and ``uv.lock`` (tests/test_packaging.py)
and the installed packages (``edgekit doctor``).
"""

from __future__ import annotations

import importlib.util
import platform
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

#: The first registry onnxruntime-gpu built for CUDA 13 (its CUDA 12 builds end at 1.27).
ORT_GPU_CUDA13_FROM = (1, 28)

#: Installed distributions whose CUDA major doctor compares.
GPU_DISTS = (
    "cupy-cuda11x",
    "cupy-cuda12x",
    "cupy-cuda13x",
    "onnxruntime-gpu",
    "tensorrt-cu12",
    "tensorrt-cu13",
    "tensorrt-cu12-bindings",
    "tensorrt-cu13-bindings",
    "tensorrt-cu12-libs",
    "tensorrt-cu13-libs",
)

_CUPY = re.compile(r"^cupy-cuda(\d+)x$")
_CU_SUFFIX = re.compile(r"^(?:nvidia-.+|tensorrt)-cu(\d+)(?:-.+)?$")
_LOCAL_CU = re.compile(r"\+cu(\d+)$")
_TORCH_CUDA = re.compile(r"^cuda\s*(?::[^=]*)?=\s*['\"](\d+)\.", re.M)


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def ort_gpu_cuda_major(version: str, machine: str | None = None) -> int | None:
    """CUDA major of an ``onnxruntime-gpu`` version from the package index.

    Args:
        version: e.g. ``"1.31.1"``, or a specifier's floor.
        machine: ``platform.machine()``; on ``aarch64`` the wheels come from NVIDIA's
            Jetson index, whose CUDA follows the JetPack, so the answer is None.

    Returns:
        13 from :data:`ORT_GPU_CUDA13_FROM` on, else 12; None where unknown.
    """
    if (machine or platform.machine()) == "aarch64":
        return None
    return 13 if _release(version)[:2] >= ORT_GPU_CUDA13_FROM else 12


def cuda_major(name: str, version: str | None = None, machine: str | None = None) -> int | None:
    """CUDA major that distribution ``name`` (at ``version``) is built for, or None.

    Args:
        name: a distribution name (any case, ``-``/``_``/``.`` alike).
        version: its version; needed for ``onnxruntime-gpu``, ``cuda-toolkit`` and torch.
        machine: as for :func:`ort_gpu_cuda_major`.

    Returns:
        12, 13, ... or None when the name says nothing about CUDA.
    """
    n = _norm(name)
    if m := _CUPY.match(n):
        return int(m.group(1))
    if m := _CU_SUFFIX.match(n):
        return int(m.group(1))
    if version is None:
        return None
    if n == "onnxruntime-gpu":
        return ort_gpu_cuda_major(version, machine)
    if n in ("cuda-toolkit", "nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12"):
        return _release(version)[0] if _release(version) else None
    if n == "torch" and (m := _LOCAL_CU.search(version)):
        return int(m.group(1)) // 10
    return None


def torch_cuda_major(version_py: Path | None = None) -> int | None:
    """CUDA major of the installed torch build, without importing torch.

    Reads ``cuda = '13.0'`` from ``torch/version.py`` (None for a CPU build), falling
    back to a ``+cuXYZ`` local version in torch's metadata.
    """
    if version_py is None:
        try:
            spec = importlib.util.find_spec("torch")
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            version_py = Path(spec.origin).with_name("version.py")
    if version_py is not None:
        try:
            m = _TORCH_CUDA.search(version_py.read_text())
        except OSError:
            m = None
        if m:
            return int(m.group(1))
    try:
        return cuda_major("torch", metadata.version("torch"))
    except metadata.PackageNotFoundError:
        return None


def installed_cuda_majors(
    version_of: Callable[[str], str | None] | None = None,
    torch_major: Callable[[], int | None] = torch_cuda_major,
    machine: str | None = None,
) -> dict[str, int]:
    """``{distribution: CUDA major}`` for the GPU packages installed here.

    Args:
        version_of: distribution name -> installed version or None (default: package
            metadata). Tests pass a fake.
        torch_major: returns torch's CUDA major or None (default: :func:`torch_cuda_major`).
        machine: as for :func:`ort_gpu_cuda_major`.
    """
    if version_of is None:

        def version_of(d: str) -> str | None:
            try:
                return metadata.version(d)
            except metadata.PackageNotFoundError:
                return None

    out = {}
    for d in GPU_DISTS:
        v = version_of(d)
        if v is not None and (major := cuda_major(d, v, machine)) is not None:
            out[f"{d} {v}"] = major
    t = torch_major()
    if t is not None:
        out["torch"] = t
    return out


def mismatch_problem(majors: dict[str, int]) -> dict | None:
    """A doctor problem when ``majors`` (from :func:`installed_cuda_majors`) disagree.

    Returns:
        ``{"problem": ..., "fix": ...}`` naming each package and its CUDA major, or
        None when at most one CUDA major is present.
    """
    by_major: dict[int, list[str]] = {}
    for pkg, major in sorted(majors.items()):
        by_major.setdefault(major, []).append(pkg)
    if len(by_major) < 2:
        return None
    desc = "; ".join(f"CUDA {m}: {', '.join(p)}" for m, p in sorted(by_major.items()))
    newest = max(by_major)
    ort = "'onnxruntime-gpu>=1.28'" if newest >= 13 else "'onnxruntime-gpu<1.28'"
    return {
        "problem": f"GPU packages built for different CUDA majors ({desc})",
        "fix": (
            f"keep one CUDA major, e.g. CUDA {newest}: uninstall the CUDA "
            f"{'/'.join(str(m) for m in sorted(by_major) if m != newest)} packages, then "
            f"pip install 'cupy-cuda{newest}x>=13' {ort} (edgekit-toolchain's gpu extra is "
            "CUDA 13 throughout)"
        ),
    }
