"""Python 3.10 (JetPack 6's system Python): every module imports, and the runtime CLI runs.

A fresh 3.10 virtual environment gets the packages ``uv.lock`` resolves for 3.10 with
the ``runtime`` extra (no torch), then imports every ``edgekit`` module and runs
``--help``, ``doctor --json``, ``targets`` and ``bench --artifact`` on an ONNX Runtime
artifact built by this (newer) interpreter.

Skipped with the reason when no Python 3.10 interpreter or no ``uv`` is found (uv
cannot download one offline), or when the packages cannot be installed (no index).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What the build host adds (the ``build`` extra); the 3.10 venv has the runtime only.
BUILD_ONLY = {
    "torch",
    "torchvision",
    "onnx",
    "onnxscript",
    "onnxslim",
    "onnxconverter_common",
    "torch_pruning",
    "sklearn",
    "matplotlib",
}

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import edgekit
build_only = set(json.loads(sys.argv[1]))
names = sorted(m.name for m in pkgutil.walk_packages(edgekit.__path__, "edgekit."))
names.remove("edgekit.__main__")  # runs the CLI; `python -m edgekit` below covers it
imported, needs_build = [], {}
for n in names:
    # every file compiles under this Python (3.11-only syntax fails here)
    spec = importlib.util.find_spec(n)
    compile(open(spec.origin, encoding="utf-8").read(), spec.origin, "exec")
    try:
        importlib.import_module(n)
        imported.append(n)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in build_only:
            raise
        needs_build[n] = e.name
heavy = [m for m in ("torch", "onnx", "tensorrt", "sklearn") if m in sys.modules]
print(json.dumps({"python": list(sys.version_info[:2]), "modules": names,
                  "imported": imported, "needs_build": needs_build, "heavy": heavy}))
"""

#: Modules the runtime install (no torch, no onnx) must import.
RUNTIME_MODULES = (
    "edgekit.cli",
    "edgekit.doctor",
    "edgekit.harness",
    "edgekit.infer",
    "edgekit.targets",
    "edgekit.manifest",
    "edgekit.report",
    "edgekit.schema",
    "edgekit.cuda_compat",
    "edgekit.trt_python",
    "edgekit.backends.base",
    "edgekit.backends.onnxruntime",
)


def _python310() -> str | None:
    """A working Python 3.10: uv's answer, ``python3.10`` on PATH, or a pyenv install."""
    cands = []
    if uv := shutil.which("uv"):
        r = subprocess.run(
            [uv, "python", "find", "3.10"],
            capture_output=True,
            text=True,
            env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
        )
        cands += r.stdout.split()
    cands += [shutil.which("python3.10") or ""]
    cands += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    for c in filter(None, cands):
        r = subprocess.run(
            [c, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
            capture_output=True,
            text=True,
        )
        if r.returncode == 0 and r.stdout.strip() == "True":
            return c
    return None


@pytest.fixture(scope="module")
def venv310(tmp_path_factory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not on PATH: cannot make the Python 3.10 environment")
    py = _python310()
    if py is None:
        pytest.skip(
            "no Python 3.10 interpreter here (uv python find 3.10 found none, and uv "
            "cannot download one offline)"
        )
    d = tmp_path_factory.mktemp("py310")
    reqs = d / "requirements.txt"
    r = subprocess.run(
        [uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes"]
        + ["--extra", "runtime", "--output-file", str(reqs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    venv = d / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", py, str(venv)], check=True)
    r = subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
        + ["-r", str(reqs), "--no-deps", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        pytest.skip(
            f"cannot install the 3.10 runtime packages (no package index?): {r.stderr[-400:]}"
        )
    return venv


def _run(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / "python"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd or venv.parent,  # not the repository: the installed package is imported
        env={**env, "COLUMNS": "200"},
    )


def test_every_module_imports_under_310(venv310):
    r = _run(venv310, "-c", IMPORT_ALL, json.dumps(sorted(BUILD_ONLY)))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["python"] == [3, 10]
    # the device's modules import; the build host's stop only at a build-extra package
    for m in RUNTIME_MODULES:
        assert m in out["imported"], (m, out["needs_build"].get(m))
    assert set(out["needs_build"].values()) <= BUILD_ONLY
    ours = sorted(
        "edgekit." + ".".join(p.relative_to(ROOT / "edgekit").with_suffix("").parts)
        for p in (ROOT / "edgekit").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    )
    assert set(ours) <= set(out["modules"]), set(ours) - set(out["modules"])
    assert out["heavy"] == []  # the runtime install has no torch/onnx, and needs none


def test_runtime_cli_under_310(venv310, tiny_workspace, tiny_npz, tmp_path):
    from edgekit.pipeline import build

    if not tiny_workspace.artifact_dir("ort-cpu").is_dir():
        build(tiny_workspace, "ort-cpu")
    art = Path(shutil.copytree(tiny_workspace.artifact_dir("ort-cpu"), tmp_path / "ort-cpu"))

    r = _run(venv310, "-m", "edgekit", "--help")
    assert r.returncode == 0 and "bench" in r.stdout, r.stderr
    r = _run(venv310, "-m", "edgekit", "doctor", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["machine"]["python"].startswith("3.10.")
    rows = {t["name"]: t for t in rep["targets"]}
    assert rows["ort-cpu"]["runnable"] and not rows["pytorch-fp32"]["runnable"]
    r = _run(
        venv310,
        "-m",
        "edgekit",
        "bench",
        "--artifact",
        str(art),
        "--dataset",
        f"npz:{tiny_npz / 'tiny-test.npz'}",
        "--threads",
        "1",
        "-o",
        str(tmp_path / "bench.json"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "bench.json").read_text())
    row = res["rows"][0] if "rows" in res else res
    assert row["status"] == "ok", row
