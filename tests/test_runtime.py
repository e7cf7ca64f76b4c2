"""The on-device runtime path: ``edgekit bench`` and ``edgekit infer`` without PyTorch.

Two proofs that the path works with torch absent:

- every run here goes through a fresh interpreter in which ``torch``,
  ``torchvision``, ``onnx``, ``sklearn`` and ``matplotlib`` are blocked
  (``sys.modules[name] = None``: ``import`` raises ModuleNotFoundError and
  ``importlib.util.find_spec`` answers None, as if they were not installed);
- a slow test builds a real virtual environment with ``edgekit-toolchain[runtime]`` only
  (skipped, with the reason, when the package index cannot be reached).

The small ORT artifact is built from the ``tiny_workspace`` fixture; the
expected outputs are computed in this (torch-enabled) process with ONNX Runtime
directly, so the CLI's numbers are checked, not just its exit status.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BLOCKED = ("torch", "torchvision", "onnx", "onnxscript", "onnxslim", "sklearn", "matplotlib")

RUNNER = """
import json, sys
blocked = json.loads(sys.argv[1])
for name in blocked:
    sys.modules[name] = None
sys.argv = ["edgekit", *json.loads(sys.argv[2])]
from edgekit.cli import main
try:
    main()
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
loaded = sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None})
sys.stdout.flush()
print("\\n@@" + json.dumps({"code": code, "loaded": loaded}))
"""


def edgekit_no_torch(*args) -> tuple[int, str, str, list[str]]:
    """Run the CLI in a fresh interpreter with the build-host packages blocked.

    Returns:
        ``(exit status, stdout, stderr, top-level modules loaded)``.
    """
    r = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(BLOCKED), json.dumps([str(a) for a in args])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "@@" in r.stdout, r.stderr[-3000:]
    out, meta = r.stdout.rsplit("@@", 1)
    meta = json.loads(meta)
    return meta["code"], out.rstrip("\n"), r.stderr, meta["loaded"]


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), stderr
    assert "Traceback" not in stderr, stderr
    return lines[-1]


@pytest.fixture(scope="module")
def artifacts(tiny_workspace, tmp_path_factory) -> dict[str, Path]:
    """Private copies of the tiny workspace's ort-cpu and pytorch-fp32 artifacts."""
    from edgekit.pipeline import build

    out = tmp_path_factory.mktemp("runtime-artifacts")
    res = {}
    for t in ("ort-cpu", "pytorch-fp32"):
        if not tiny_workspace.artifact_dir(t).is_dir():
            build(tiny_workspace, t)
        res[t] = Path(shutil.copytree(tiny_workspace.artifact_dir(t), out / t))
    return res


@pytest.fixture(scope="module")
def expected(artifacts, tiny_npz):
    """Logits of the tiny test split under the ORT artifact, computed directly."""
    import onnxruntime as ort

    from edgekit.manifest import read_manifest
    from edgekit.preprocess import Preprocess

    m = read_manifest(artifacts["ort-cpu"])
    d = np.load(tiny_npz / "tiny-test.npz")
    x, y = d["x"], d["y"]
    s = ort.InferenceSession(
        str(artifacts["ort-cpu"] / m["artifact"]), providers=["CPUExecutionProvider"]
    )
    logits = s.run(None, {m["io"]["input"]: Preprocess.from_dict(m["preprocess"]).apply(x)})[0]
    return {"x": x, "y": y, "logits": logits, "classes": m["classes"]}


def _softmax(z):
    z = np.asarray(z, np.float64) - np.max(z, axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_blocker_hides_torch(artifacts):
    """The blocked interpreter really lacks torch: the PyTorch baseline cannot open,
    and the message says which extra to install (exit 1: the asked row is unavailable)."""
    code, out, err, loaded = edgekit_no_torch(
        "bench", "--artifact", artifacts["pytorch-fp32"], "--quick"
    )
    assert code == 1 and "unavailable [1]" in out
    line = _one_error_line(err)
    assert "torch not installed" in line and "edgekit-toolchain[build]" in line
    assert "torch" not in loaded


def test_bench_without_torch(artifacts, tiny_npz, expected, tmp_path):
    out = tmp_path / "bench.json"
    code, stdout, err, loaded = edgekit_no_torch(
        "bench",
        "--artifact",
        artifacts["ort-cpu"],
        "--dataset",
        f"npz:{tiny_npz / 'tiny-test.npz'}",
        "--quick",
        "--batch-sizes",
        "1,8",
        "--threads",
        "1",
        "--output",
        out,
        # measure in this (blocked) interpreter: a spawned child would not inherit the blocker;
        # the default isolated path is covered by the real runtime-only venv test below
        "--in-process",
    )
    assert code == 0, err
    assert "onnxruntime" in loaded
    assert not set(BLOCKED) & set(loaded)
    row = json.loads(out.read_text())["rows"][0]
    assert row["status"] == "ok" and row["backend"] == "onnxruntime"
    assert row["latency_ms"]["p50"] > 0 and row["throughput_ips"]["8"] > 0
    want = (expected["logits"].argmax(1) == expected["y"]).mean() * 100
    assert row["top1"] == pytest.approx(want)
    assert row["predictions"] == expected["logits"].argmax(1).tolist()
    assert "ort-cpu" in stdout


def test_infer_npz_and_image_without_torch(artifacts, expected, tmp_path):
    from PIL import Image

    batch = tmp_path / "batch.npz"
    np.savez(batch, x=expected["x"][:6], y=expected["y"][:6])
    img = tmp_path / "first.png"
    Image.fromarray(expected["x"][0]).save(img)
    code, stdout, err, loaded = edgekit_no_torch(
        "infer", "-a", artifacts["ort-cpu"], "-i", batch, "-i", img, "--top-k", "3", "--json"
    )
    assert code == 0, err
    assert "onnxruntime" in loaded and "PIL" in loaded
    assert not set(BLOCKED) & set(loaded)
    res = json.loads(stdout)
    assert res["images"] == 7 and res["top_k"] == 3 and res["notes"] == []
    probs = _softmax(expected["logits"][:6])
    probs = np.concatenate([probs, probs[:1]])  # the PNG is image 0 again
    for i, p in enumerate(res["predictions"]):
        want = np.argsort(-probs[i], kind="stable")[:3]
        assert [t["index"] for t in p["top"]] == want.tolist()
        assert [t["class"] for t in p["top"]] == [expected["classes"][j] for j in want]
        assert [t["probability"] for t in p["top"]] == pytest.approx(probs[i][want], abs=1e-5)
    # labels come from the npz; the PNG has none, and top-1 counts the labelled six
    assert [p["label"] for p in res["predictions"]] == [*expected["y"][:6].tolist(), None]
    assert res["labelled"] == 6
    want = (expected["logits"][:6].argmax(1) == expected["y"][:6]).mean() * 100
    assert res["top1"] == pytest.approx(want)


def test_infer_text_output_and_top1(artifacts, expected, tmp_path):
    batch = tmp_path / "batch.npz"
    np.savez(batch, x=expected["x"], y=expected["y"])
    code, stdout, err, _ = edgekit_no_torch(
        "infer", "-a", artifacts["ort-cpu"], "-i", batch, "-k", "2"
    )
    assert code == 0, err
    lines = stdout.splitlines()
    assert len(lines) == len(expected["y"]) + 1
    top1 = (expected["logits"].argmax(1) == expected["y"]).mean() * 100
    assert lines[-1] == f"top-1: {top1:.2f}% of {len(expected['y'])} labelled images"
    first = expected["classes"][int(expected["logits"][0].argmax())]
    assert lines[0].startswith("batch.npz[0] (label ") and f": {first} " in lines[0]


def test_infer_converts_and_resizes_with_a_note(artifacts, expected, tmp_path):
    from PIL import Image

    grey = tmp_path / "grey.png"
    Image.fromarray(expected["x"][0]).convert("L").resize((48, 40)).save(grey)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(expected["x"][1]).convert("RGBA").save(rgba)
    code, stdout, err, _ = edgekit_no_torch(
        "infer", "-a", artifacts["ort-cpu"], "-i", grey, "-i", rgba
    )
    assert code == 0, err
    assert "note: grey.png: converted L to RGB" in err
    assert "note: grey.png: resized from 48x40 to 32x32 (bilinear, aspect ratio not kept)" in err
    assert "note: rgba.png: converted RGBA to RGB (alpha channel dropped)" in err
    assert len(stdout.splitlines()) == 2
    # the RGBA image is otherwise unchanged: the same top class as the array itself
    assert stdout.splitlines()[1].startswith(
        f"rgba.png: {expected['classes'][int(expected['logits'][1].argmax())]} "
    )

    code, _, err, _ = edgekit_no_torch(
        "infer", "-a", artifacts["ort-cpu"], "-i", grey, "--no-resize"
    )
    assert code == 2
    assert "grey.png is 48x40 (width x height) but the model takes 32x32" in _one_error_line(err)


# --- errors: one line, exit 2 (in-process; the blocked runs above cover the import side) ---


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from edgekit.cli import main

    monkeypatch.setattr(sys, "argv", ["edgekit", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
        raise SystemExit(0)
    cap = capsys.readouterr()
    return e.value.code or 0, cap.out, cap.err


def _edit_manifest(src: Path, dst: Path, fn) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    fn(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_error_manifest_without_preprocessing(
    artifacts, expected, tmp_path, monkeypatch, capsys, how
):
    def drop(m):
        if how == "missing":
            del m["preprocess"]
        else:
            m["preprocess"] = {}

    a = _edit_manifest(artifacts["ort-cpu"], tmp_path / "a", drop)
    batch = tmp_path / "b.npz"
    np.savez(batch, x=expected["x"][:2])
    for cmd in (["infer", "-a", a, "-i", batch], ["bench", "-a", a, "--quick"]):
        code, _, err = run_cli(monkeypatch, capsys, *cmd)
        assert code == 2
        line = _one_error_line(err)
        assert "preprocess" in line and "rebuild" in line


def test_error_npz_without_x_or_y(artifacts, expected, tmp_path, monkeypatch, capsys):
    nox = tmp_path / "nox.npz"
    np.savez(nox, images=expected["x"][:2])
    code, _, err = run_cli(monkeypatch, capsys, "infer", "-a", artifacts["ort-cpu"], "-i", nox)
    assert code == 2 and "has no array 'x' (it has images)" in _one_error_line(err)

    noy = tmp_path / "noy-test.npz"
    np.savez(noy, x=expected["x"][:2])
    code, _, err = run_cli(
        monkeypatch, capsys, "bench", "-a", artifacts["ort-cpu"], "-d", f"npz:{noy}", "--quick"
    )
    assert code == 2 and "has no array 'y' (it has x)" in _one_error_line(err)


def test_error_bad_inputs(artifacts, expected, tmp_path, monkeypatch, capsys):
    a = artifacts["ort-cpu"]
    notimg = tmp_path / "notes.txt"
    notimg.write_text("hello")
    small = tmp_path / "small.npz"
    np.savez(small, x=expected["x"][:2, :16, :16])
    from PIL import Image

    deep = tmp_path / "deep.png"
    Image.fromarray(np.zeros((32, 32), np.uint16) + 1000).save(deep)
    cases = [
        (["-i", notimg], "cannot read"),
        (["-i", tmp_path / "absent.png"], "input file not found"),
        (["-i", small], "images are 16x16 but the model takes 32x32"),
        (["-i", deep], "16-bit or float"),
        (["-i", small, "--top-k", "0"], "--top-k must be at least 1"),
    ]
    for extra, msg in cases:
        code, _, err = run_cli(monkeypatch, capsys, "infer", "-a", a, *extra)
        assert code == 2, (extra, err)
        assert msg in _one_error_line(err), (extra, err)


def test_error_backend_runtime_missing(artifacts, tmp_path, monkeypatch, capsys):
    """An artifact of a backend that is not available here names what to install
    (an unavailable asked row: exit status 1)."""
    a = _edit_manifest(
        artifacts["ort-cpu"], tmp_path / "trt", lambda m: m.update(backend="tensorrt", options={})
    )
    code, _, err = run_cli(monkeypatch, capsys, "bench", "-a", a, "--quick")
    assert code == 1
    assert "tensorrt" in _one_error_line(err).lower()


def test_build_command_without_torch_names_the_extra(tmp_path):
    code, _, err, _ = edgekit_no_torch("export", "--work-dir", tmp_path / "w")
    assert code == 2
    line = _one_error_line(err)
    assert "edgekit-toolchain[build]" in line


# --- a real virtual environment with the runtime install only -----------------------


@pytest.mark.slow
def test_runtime_install_in_a_fresh_venv(artifacts, tiny_npz, expected, tmp_path):
    """``uv pip install .[runtime]`` into a new venv (no torch), then bench and infer."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    repo = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(py), f"{repo}[runtime]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        pytest.skip(
            f"cannot install edgekit-toolchain[runtime] here (no package index?): {r.stderr[-300:]}"
        )
    probe = subprocess.run(
        [
            str(py),
            "-c",
            "import importlib.util as u; print([m for m in "
            "('torch', 'torchvision', 'onnx', 'sklearn') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"
    edgekit = venv / "bin" / "edgekit"
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            str(edgekit),
            "bench",
            "-a",
            str(artifacts["ort-cpu"]),
            "-d",
            f"npz:{tiny_npz / 'tiny-test.npz'}",
            "--quick",
            "--batch-sizes",
            "1",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["predictions"] == expected["logits"].argmax(1).tolist()
    batch = tmp_path / "b.npz"
    np.savez(batch, x=expected["x"][:3])
    r = subprocess.run(
        [str(edgekit), "infer", "-a", str(artifacts["ort-cpu"]), "-i", str(batch), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [p["top"][0]["index"] for p in res["predictions"]] == expected["logits"][:3].argmax(
        1
    ).tolist()
