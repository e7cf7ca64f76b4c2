"""edgekit/backends/tensorrt.py type-checked (mypy) against TensorRT 10.13's published API.

TensorRT cannot be installed here, but ``tensorrt-stubs`` 10.13.0.35.1 (the dev group)
carries type stubs generated from the 10.13 bindings. mypy checks every TensorRT call in
the backend against them: a misspelt attribute, a wrong number or kind of arguments, a
method that does not exist. docs/tensorrt.md says what this does and does not prove.

The published stubs cannot be used as installed, so the test makes a usable copy:
- they sit in ``tensorrt/`` and ``tensorrt_bindings/`` without ``py.typed`` (PEP 561 wants
  ``tensorrt-stubs/``), so mypy skips them; the copy goes on ``MYPYPATH``;
- a few plugin-interface signatures do not parse (a parameter named ``in``, a keyword;
  a parameter without a default after defaulted ones): :func:`repair_stub` renames the
  parameter (``in_``) or gives it ``= ...``, only on lines the parser rejects;
- errors inside the stubs themselves (e.g. an enum member named ``bool`` that shadows
  the builtin) are not edgekit's and are silenced for the stub modules only.

A canary file with a misspelt TensorRT method and a call missing an argument must fail
the same check, so a check that silently sees no stubs cannot pass.
"""

from __future__ import annotations

import ast
import importlib.util
import keyword
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MYPY_INI = """
[mypy]
check_untyped_defs = True
follow_imports = silent
ignore_missing_imports = True
warn_unused_ignores = True

[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
"""

CANARY = """
def canary() -> None:
    import tensorrt as trt

    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    builder.create_network_v2(0)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)
"""


def _split_params(params: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in params:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur] if cur.strip() else parts


def _fix_def(line: str) -> str:
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*(?:->[^:]+)?:\s*(?:\.\.\.)?\s*)$", line.rstrip("\n"))
    if not m:
        return line
    out, seen_default = [], False
    for p in _split_params(m.group(2)):
        p = p.strip()
        name = re.match(r"^\**(\w+)", p)
        if name and keyword.iskeyword(name.group(1)):
            p = p.replace(name.group(1), name.group(1) + "_", 1)
        if "=" in p:
            seen_default = True
        elif seen_default and not p.startswith("*") and p != "/":
            p += " = ..."
        out.append(p)
    return m.group(1) + ", ".join(out) + m.group(3) + "\n"


def repair_stub(text: str) -> tuple[str, int]:
    """Make a generated stub parse: fix only the ``def`` lines Python's parser rejects.

    Returns:
        ``(text, number of lines changed)``.

    Raises:
        SyntaxError: a line it cannot fix.
    """
    lines = text.splitlines(keepends=True)
    fixed = 0
    while True:
        try:
            ast.parse("".join(lines))
            return "".join(lines), fixed
        except SyntaxError as e:
            i = (e.lineno or 1) - 1
            new = _fix_def(lines[i])
            if new == lines[i] or fixed > 100:
                raise
            lines[i] = new
            fixed += 1


def test_repair_stub_fixes_only_what_does_not_parse():
    src = (
        "class P:\n"
        "    def size(self, in: list[int], out: list[int]) -> int: ...\n"
        "    def scale(self, x: int, shift: int = None, axis: int) -> None: ...\n"
        "    def ok(self, a: int, b: int = 1) -> None: ...\n"
    )
    text, n = repair_stub(src)
    assert n == 2
    assert "def size(self, in_: list[int], out: list[int]) -> int: ..." in text
    assert "def scale(self, x: int, shift: int = None, axis: int = ...) -> None: ..." in text
    assert "def ok(self, a: int, b: int = 1) -> None: ..." in text


@pytest.fixture(scope="module")
def stubs_dir(tmp_path_factory) -> Path:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy not installed (uv sync installs it with the dev group)")
    try:
        files = metadata.files("tensorrt-stubs") or []
        version = metadata.version("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs not installed (uv sync installs it with the dev group)")
    assert version.startswith("10.13."), version
    out = tmp_path_factory.mktemp("trt-stubs")
    pyi = [f for f in files if f.suffix == ".pyi"]
    assert {str(f) for f in pyi} >= {"tensorrt/__init__.pyi", "tensorrt_bindings/tensorrt.pyi"}
    repaired = 0
    for f in pyi:
        dst = out / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        text, n = repair_stub(Path(f.locate()).read_text())
        dst.write_text(text)
        repaired += n
    assert repaired < 20, f"{repaired} stub lines repaired: the stubs changed, look again"
    return out


def _mypy(stubs: Path, tmp: Path, *files: str) -> subprocess.CompletedProcess:
    ini = tmp / "mypy.ini"
    ini.write_text(MYPY_INI)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ini), "--cache-dir", str(tmp / "c")]
        + ["--no-color-output", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MYPYPATH": str(stubs)},
    )


def test_tensorrt_backend_type_checks_against_the_10_13_stubs(stubs_dir, tmp_path):
    canary = tmp_path / "trt_canary.py"
    canary.write_text(CANARY)
    r = _mypy(stubs_dir, tmp_path, "edgekit/backends/tensorrt.py", str(canary))
    lines = [ln for ln in r.stdout.splitlines() if ": error:" in ln]
    ours = [ln for ln in lines if ln.startswith("edgekit/")]
    assert ours == [], "\n".join(ours)
    # the canary proves the stubs were read: both mistakes are caught
    assert any('"Builder" has no attribute "create_network_v2"' in ln for ln in lines), r.stdout
    assert any("set_memory_pool_limit" in ln and "[call-arg]" in ln for ln in lines), r.stdout
    assert len(lines) == 2, r.stdout


def test_a_folder_of_stubs_is_not_tensorrt(tmp_path, monkeypatch):
    """The stubs' ``tensorrt/`` (only ``.pyi``) imports as a namespace package: not TensorRT."""
    from edgekit.backends.base import is_installed

    (tmp_path / "fake_trt").mkdir()
    (tmp_path / "fake_trt" / "__init__.pyi").write_text("x: int\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert importlib.util.find_spec("fake_trt") is not None  # Python finds it...
    assert not is_installed("fake_trt")  # ...edgekit does not take it for a package
    (tmp_path / "fake_trt" / "__init__.py").write_text("")
    importlib.invalidate_caches()
    assert is_installed("fake_trt")
