"""Packaging facts that a user's install depends on, checked from the repository's files.

- The distribution name is our own: the package index's ``edgekit`` is an unrelated
  project, so no install hint in the README, docs, docker files, targets or the
  package's messages may name a bare ``edgekit[...]`` or ``pip install edgekit``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from edgekit import DIST_NAME

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
