"""Packaging facts that a user's install depends on, checked from the repository's files.

- The distribution name is our own: the package index's ``edgekit`` is an unrelated
  project, so no install hint in the README, docs, docker files, targets or the
  package's messages may name a bare ``edgekit[...]`` or ``pip install edgekit``.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgekit import DIST_NAME
from edgekit.targets import tomllib  # tomllib, or tomli on Python 3.10

ROOT = Path(__file__).resolve().parents[1]

#: ``edgekit[extra]`` not preceded by a name character (``edgekit-toolchain[`` has no
#: ``edgekit[`` in it anyway), or ``pip install edgekit`` with no suffix.
BARE_HINT = re.compile(
    r"(?<![\w./-])edgekit\[|pip3?\s+install\s+(?:-\S+\s+)*['\"]?edgekit(?![\w-])(?!/)"
)


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted(p for p in (ROOT / "docker").rglob("*") if p.is_file())
    files += sorted((ROOT / "edgekit").rglob("*.py"))
    files += sorted((ROOT / "targets").glob("*.toml"))
    files += sorted((ROOT / "benchmarks").rglob("*.py"))
    files += sorted((ROOT / "benchmarks").rglob("*.md"))
    return files


def bare_hints(text: str) -> list[str]:
    """The lines of ``text`` with an install hint naming the index's unrelated ``edgekit``."""
    return [line.strip() for line in text.splitlines() if BARE_HINT.search(line)]


def test_the_scanner_flags_bare_hints_and_passes_ours():
    bad = [
        "pip install 'edgekit[runtime]'",
        'pip install "edgekit[gpu]"',
        "install edgekit[gpu] on a machine with a CUDA GPU",
        "pip install edgekit",
        "pip install -U edgekit",
    ]
    good = [
        "pip install 'edgekit-toolchain[runtime]'",
        "pip install './edgekit_toolchain-0.1.0-py3-none-any.whl[runtime]'",
        'pip install "/src[cpu]" torch',
        "pip install /opt/edgekit-src[cpu]",
        "edgekit bench --artifact ort-cpu",
        "pip install edgekit-toolchain",
    ]
    for line in bad:
        assert bare_hints(line) == [line], line
    for line in good:
        assert bare_hints(line) == [], line


def test_no_install_hint_names_the_unrelated_edgekit():
    files = _scanned_files()
    assert len(files) > 30  # README, docs, docker, the package, targets, benchmarks
    found = {
        str(p.relative_to(ROOT)): hits
        for p in files
        if (hits := bare_hints(p.read_text(encoding="utf-8", errors="replace")))
    }
    assert not found, f"install hints naming the index's unrelated 'edgekit': {found}"


def test_distribution_name_is_ours_and_the_command_is_edgekit():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == DIST_NAME != "edgekit"
    assert pyproject["project"]["scripts"] == {"edgekit": "edgekit.cli:main"}
    lock = (ROOT / "uv.lock").read_text()
    assert f'name = "{DIST_NAME}"' in lock


def test_error_message_hints_use_the_distribution_name():
    from edgekit.cli import _INSTALL_HINTS

    for mod in ("torch", "onnx", "onnxruntime", "PIL"):
        assert f"'{DIST_NAME}[" in _INSTALL_HINTS[mod], (mod, _INSTALL_HINTS[mod])


# --------------------------------------------------------------------------- CUDA majors


def extras_cuda_majors(pyproject: dict) -> dict[str, int]:
    """``{"extra: requirement": CUDA major}`` for every extra's CUDA-specific requirement.

    An ``onnxruntime-gpu`` requirement counts by its floor: below 1.28 it admits the
    index's CUDA 12 builds (and without a floor, too).
    """
    from packaging.requirements import Requirement

    from edgekit.cuda_compat import cuda_major, ort_gpu_cuda_major

    out = {}
    for extra, reqs in pyproject["project"]["optional-dependencies"].items():
        for s in reqs:
            r = Requirement(s)
            if r.name.lower() == "onnxruntime-gpu":
                floors = [x.version for x in r.specifier if x.operator in (">=", "==", "~=", ">")]
                major = ort_gpu_cuda_major(max(floors, default="0"), machine="x86_64")
            else:
                major = cuda_major(r.name, None, machine="x86_64")
            if major is not None:
                out[f"{extra}: {s}"] = major
    return out


def lock_cuda_majors(lock: dict) -> dict[str, int]:
    """``{"package version": CUDA major}`` over every package uv.lock resolves.

    torch's own version has no ``+cuXYZ`` on the index, so its major is that of the
    CUDA packages it depends on (``nvidia-*-cu13``, ``cuda-toolkit``).
    """
    from edgekit.cuda_compat import cuda_major

    versions = {p["name"]: p["version"] for p in lock["package"] if "version" in p}
    out = {}
    for p in lock["package"]:
        name, version = p["name"], p.get("version")
        major = cuda_major(name, version, machine="x86_64")
        if name == "torch" and major is None:
            deps = {
                cuda_major(d["name"], versions.get(d["name"]), machine="x86_64")
                for d in p.get("dependencies", [])
            } - {None}
            assert len(deps) == 1, f"torch {version} depends on CUDA majors {deps}"
            major = deps.pop()
        if major is not None:
            out[f"{name} {version}"] = major
    return out


def test_extras_and_lock_use_one_cuda_major():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    ex = extras_cuda_majors(pyproject)
    locked = lock_cuda_majors(lock)
    # the gpu extra's CuPy and ONNX Runtime and the build extra's torch are all seen
    assert any(k.startswith("gpu: cupy-cuda") for k in ex), ex
    assert any(k.startswith("gpu: onnxruntime-gpu") for k in ex), ex
    assert any(k.startswith("torch ") for k in locked), locked
    assert set(ex.values()) | set(locked.values()) == {13}, (ex, locked)


def test_cuda_major_mix_is_detected():
    """The check above can fail: the old gpu extra (cupy-cuda12x, onnxruntime-gpu>=1.20)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pyproject["project"]["optional-dependencies"]["gpu"] = [
        "onnxruntime-gpu>=1.20",
        "cupy-cuda12x>=13",
    ]
    assert set(extras_cuda_majors(pyproject).values()) == {12}
    lock = {
        "package": [
            {"name": "torch", "version": "2.13.0", "dependencies": [{"name": "nvidia-cudnn-cu13"}]},
            {"name": "nvidia-cudnn-cu13", "version": "9.1"},
            {"name": "cupy-cuda12x", "version": "14.2.0"},
            {"name": "onnxruntime-gpu", "version": "1.31.1"},
        ]
    }
    assert lock_cuda_majors(lock) == {
        "torch 2.13.0": 13,
        "nvidia-cudnn-cu13 9.1": 13,
        "cupy-cuda12x 14.2.0": 12,
        "onnxruntime-gpu 1.31.1": 13,
    }
