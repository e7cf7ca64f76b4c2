"""Which Python TensorRT's bindings were built for, when ``import tensorrt`` fails.

TensorRT's Python bindings are compiled for one CPython minor version. JetPack 6
(L4T r36.x, Ubuntu 22.04) ships them for its system Python 3.10 only, as
``/usr/lib/python3.10/dist-packages/tensorrt``; NVIDIA's wheels carry the version in
their tag (``cp310``) and in ``Requires-Python``. Run under another Python, the
bindings are either invisible (another ``site-packages``) or fail to load. This module
finds them anyway and says which Python they need; nothing is imported.
"""

from __future__ import annotations

import glob
import re
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

#: Where Debian/Ubuntu (JetPack) packages put Python modules, one folder per Python.
SYSTEM_GLOBS = (
    "/usr/lib/python3*/dist-packages/tensorrt*",
    "/usr/local/lib/python3*/dist-packages/tensorrt*",
    "/usr/lib/python3/dist-packages/tensorrt*",
)

_CP_TAG = re.compile(r"cp3(\d+)")
_SO_TAG = re.compile(r"cpython-3(\d+)")
_PY_DIR = re.compile(r"python3\.(\d+)")


def _python() -> str:
    return f"3.{sys.version_info[1]}"


def _dist_needs(dist) -> tuple[str, set[str]]:
    """``(description, {"3.10", ...})`` for one installed tensorrt* distribution."""
    needs: set[str] = set()
    for line in (dist.read_text("WHEEL") or "").splitlines():
        if line.startswith("Tag:"):
            needs |= {f"3.{m}" for m in _CP_TAG.findall(line)}
    for f in dist.files or ():
        needs |= {f"3.{m}" for m in _SO_TAG.findall(str(f))}
    rp = dist.metadata.get("Requires-Python")
    desc = f"{dist.metadata['Name']} {dist.version}"
    if rp:
        desc += f" (Requires-Python {rp})"
    return desc, needs


def _system_needs(paths: Iterable[str]) -> list[tuple[str, set[str]]]:
    out = []
    for p in paths:
        needs = {f"3.{m}" for m in _PY_DIR.findall(p)}
        path = Path(p)
        if path.is_dir():
            for so in path.glob("*.so"):
                needs |= {f"3.{m}" for m in _SO_TAG.findall(so.name)}
        if needs:
            out.append((p, needs))
    return out


def find_bindings(
    dists: Iterable | None = None, system_paths: Iterable[str] | None = None
) -> list[tuple[str, set[str]]]:
    """Every TensorRT binding found, as ``(where, {Python versions it is built for})``.

    Args:
        dists: installed distributions (default: :func:`importlib.metadata.distributions`,
            those named ``tensorrt*``).
        system_paths: system module folders (default: :data:`SYSTEM_GLOBS` expanded).
    """
    if dists is None:
        dists = [
            d
            for d in metadata.distributions()
            if (d.metadata["Name"] or "").lower().replace("_", "-").startswith("tensorrt")
        ]
    if system_paths is None:
        system_paths = sorted({p for g in SYSTEM_GLOBS for p in glob.glob(g)})
    found = [_dist_needs(d) for d in dists]
    return [(w, n) for w, n in found if n] + _system_needs(system_paths)


def bindings_problem(
    import_error: str | None,
    imported: bool,
    python: str | None = None,
    bindings: list[tuple[str, set[str]]] | None = None,
) -> dict | None:
    """A doctor problem when TensorRT's bindings exist but not for this Python.

    Args:
        import_error: the error of ``import tensorrt`` (None when it was not found or
            imported fine).
        imported: whether ``import tensorrt`` worked.
        python: this interpreter's ``"3.X"`` (default: the running one).
        bindings: from :func:`find_bindings` (default: searched now).

    Returns:
        ``{"problem": ..., "fix": ...}`` or None (imported fine, or no TensorRT at all).
    """
    if imported:
        return None
    python = python or _python()
    bindings = find_bindings() if bindings is None else bindings
    other = [(w, n) for w, n in bindings if python not in n]
    if other:
        needs = sorted({v for _, n in other for v in n}, key=lambda v: int(v.split(".")[1]))
        where = "; ".join(f"{w}: Python {', '.join(sorted(n))}" for w, n in other)
        return {
            "problem": (
                f"TensorRT's Python bindings need Python {' or '.join(needs)}, "
                f"this is Python {python} ({where})"
            ),
            "fix": (
                f"run edgekit under Python {needs[0]} (JetPack 6: a venv of /usr/bin/python3 "
                "with --system-site-packages, as docker/jetson/Dockerfile does), or install "
                f"bindings built for Python {python} that match the TensorRT libraries"
            ),
        }
    if import_error:
        return {
            "problem": f"import tensorrt fails: {import_error}",
            "fix": "reinstall TensorRT's Python bindings for the installed TensorRT libraries",
        }
    return None
