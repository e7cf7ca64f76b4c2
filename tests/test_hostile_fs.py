"""Issue 13, the file-system and CLI half: a hostile or careless user meets one error line.

Every CLI case asserts the exit status, the one ``error:`` line (and no traceback),
and that nothing outside the work directory changed: a sentinel directory placed
beside the work directory is hashed before and after. Disk faults are simulated by
patching ``os.replace`` (and friends) to raise ``OSError(ENOSPC/EROFS, ...)``: the
tests run as root, where ``chmod`` stops nothing.

To keep the interpreter start-up cost (~4 s with torch) low, the CLI cases run in
batches through :data:`DRIVER`: one ``python -c`` process that calls
``edgekit.cli.main`` once per case, each with its own argv, optional ENOSPC patch and
captured stdout/stderr.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import EdgekitError

REPO = Path(__file__).resolve().parents[1]

DRIVER = r"""
import contextlib, errno, io, json, os, sys, traceback
cases = json.loads(sys.argv[1])
real_replace = os.replace
from edgekit.cli import main
results = []
for c in cases:
    fail_on = c.get("enospc_on")
    def fake_replace(src, dst, *a, _fail=fail_on, **k):
        if _fail and str(dst).endswith(_fail):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **k)
    os.replace = fake_replace
    saved_env = dict(os.environ)
    os.environ.update(c.get("env", {}))
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["edgekit", *c["args"]]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    os.replace = real_replace
    os.environ.clear()
    os.environ.update(saved_env)
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print("@@RESULTS@@" + json.dumps(results))
"""


def run_cli_batch(cases: list[dict], cwd: Path | None = None) -> list[dict]:
    """Run CLI cases (``{"args": [...], "enospc_on": suffix?, "env": {...}?}``) in one process."""
    for c in cases:
        c["args"] = [str(a) for a in c["args"]]
    res = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases)],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    marker = "@@RESULTS@@"
    assert marker in res.stdout, res.stderr[-3000:]
    return json.loads(res.stdout.split(marker, 1)[1])


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_user_error(res: dict, *patterns: str, code: int = 2) -> str:
    """Exit ``code``, exactly one ``error:`` line holding every pattern, no traceback."""
    err = res["stderr"]
    assert res["code"] == code, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for p in patterns:
        assert p in lines[0], lines[0]
    return lines[0]


def tree_hash(root: Path) -> str:
    """Names, kinds, link targets and contents of everything under ``root``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(root)).encode())
            if p.is_symlink():
                h.update(b"L" + os.readlink(p).encode())
            elif p.is_file():
                h.update(b"F" + p.read_bytes())
            else:
                h.update(b"D")
    return h.hexdigest()


def make_sentinel(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "a.txt").write_text("do not touch")
    (d / "victim").mkdir()
    (d / "victim" / "precious.bin").write_bytes(os.urandom(64))
    (d / "artifacts").mkdir()  # an "artifacts" folder outside the work dir
    (d / "artifacts" / "keep.txt").write_text("keep")
    return d


def copy_workspace(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for n in ("edgekit.json", "model.pt", "model.onnx"):
        shutil.copy2(src / n, dst / n)
    return dst


@pytest.fixture(scope="module")
def box(tmp_path_factory, tiny_workspace):
    """``BOX/work`` (a copy of tiny_workspace with ort-cpu built) beside ``BOX/sentinel``."""
    from edgekit.pipeline import Workspace, build

    root = tmp_path_factory.mktemp("hostile")
    work = copy_workspace(tiny_workspace.root, root / "work")
    build(Workspace(work), "ort-cpu")
    make_sentinel(root / "sentinel")
    return root


@pytest.fixture
def sentinel(box):
    """Assert that the sentinel beside the work directory is unchanged by the test."""
    before = tree_hash(box / "sentinel")
    yield box / "sentinel"
    assert tree_hash(box / "sentinel") == before, "a file outside the work directory changed"


def write_target_file(path: Path, name: str) -> Path:
    path.write_text(
        f'name = {json.dumps(name)}\nbackend = "onnxruntime"\nprecision = "fp32"\n'
        '[options]\nexecution_provider = "CPUExecutionProvider"\n'
    )
    return path


# ---------------------------------------------------------------------------
# 1. Containment
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "", "/abs", "..", ".", "a/b", ".ort-cpu.x.part"])
def test_target_names_never_leave_the_artifacts_dir(tmp_path, name):
    from edgekit.pipeline import Workspace

    with pytest.raises(EdgekitError, match="target name"):
        Workspace(tmp_path).artifact_dir(name)
    assert not (tmp_path / "artifacts").exists()


def test_contained_follows_symlinks_out_and_allows_inside(tmp_path):
    from edgekit.fileio import contained

    (tmp_path / "root" / "sub").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "root" / "out")
    with pytest.raises(EdgekitError, match="leads outside"):
        contained(tmp_path / "root", "out/x")
    with pytest.raises(EdgekitError, match="leads outside"):
        contained(tmp_path / "root", "sub/../../x")
    assert contained(tmp_path / "root", "sub/model.onnx") == tmp_path / "root/sub/model.onnx"


def test_python_api_target_with_bad_name_is_refused(box, sentinel):
    """A Target built in Python (no schema check) with a crafted name writes nothing."""
    from edgekit.backends.base import BuildContext
    from edgekit.backends.tensorrt import write_onnx_only
    from edgekit.pipeline import Workspace
    from edgekit.targets import Target

    ws = Workspace(box / "work")
    before = tree_hash(box / "work")
    for name in ("../../sentinel/victim", str(sentinel / "victim"), ""):
        with pytest.raises(EdgekitError):
            ws.artifact_dir(name)
        t = Target(name=name, backend="tensorrt", precision="fp16")
        with pytest.raises(EdgekitError, match="target name"):
            write_onnx_only(t, BuildContext(ws.onnx, None, None, []), ws.root, force=True)
    assert tree_hash(box / "work") == before


def test_crafted_target_files_cannot_write_or_delete_outside(box, sentinel, tmp_path):
    """build and run (which builds with force) refuse names that are paths; --force too."""
    work = box / "work"
    before = tree_hash(work)
    names = ["../../sentinel/victim", str(sentinel / "victim"), "", "../artifacts"]
    cases = []
    for i, name in enumerate(names):
        f = write_target_file(tmp_path / f"t{i}.toml", name)
        cases.append({"args": ["build", "-t", name, "-w", work, "--target-file", f, "--force"]})
        cases.append(
            {
                "args": ["run", "-w", work, "--targets", name, "--target-file", f]
                + ["--weights", work / "model.pt", "--force", "--quick"]
            }
        )
    envdir = tmp_path / "envtargets"
    envdir.mkdir()
    write_target_file(envdir / "evil.toml", "../../sentinel/victim")
    cases.append(
        {
            "args": ["build", "-t", "../../sentinel/victim", "-w", work, "--force"],
            "env": {"EDGEKIT_TARGET_PATH": str(envdir)},
        }
    )
    results = run_cli_batch(cases)
    for r in results:
        assert_user_error(r)
    assert tree_hash(work) == before, "the work directory changed"


# ---------------------------------------------------------------------------
# 2. File-system faults
# ---------------------------------------------------------------------------


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _erofs(*_a, **_k):
    raise OSError(errno.EROFS, "Read-only file system")


def _parts(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob(".*") if p.name.endswith(".part") or ".onnx." in p.name)


def test_atomic_writes_turn_disk_faults_into_one_error(tmp_path, monkeypatch):
    from edgekit import fileio

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "f").write_text("old")
    (tmp_path / "r.json").write_text("old")
    with monkeypatch.context() as m:
        m.setattr(fileio.os, "replace", _enospc)
        with pytest.raises(EdgekitError, match=r"cannot write .*r\.json: no space left"):
            fileio.write_json(tmp_path / "r.json", {"a": 1})
        with (
            pytest.raises(EdgekitError, match="no space left on device -- free some"),
            fileio.atomic_dir(tmp_path / "old", force=True) as d,
        ):
            (d / "f").write_text("new")
    with monkeypatch.context() as m:
        m.setattr(fileio.tempfile, "mkstemp", _erofs)
        with pytest.raises(EdgekitError, match="read-only file system"):
            fileio.write_json(tmp_path / "new.json", {})
    # a fault inside the body is relabelled; another error is not
    with (
        pytest.raises(EdgekitError, match="permission denied"),
        fileio.atomic_path(tmp_path / "x.bin") as p,
    ):
        raise OSError(errno.EACCES, "Permission denied", str(p))
    with pytest.raises(RuntimeError), fileio.atomic_path(tmp_path / "y.bin"):
        raise RuntimeError("a bug")
    assert _parts(tmp_path) == []
    assert (tmp_path / "r.json").read_text() == "old"
    assert (tmp_path / "old" / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "r.json"]


def test_export_onto_a_full_disk_leaves_no_hidden_file(tmp_path, monkeypatch):
    import onnx
    import torch

    from edgekit.export import export_onnx
    from edgekit.models import build_model

    model = build_model("resnet8", 10).eval()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    real_export = torch.onnx.export

    def half_written_then_full(model, args, f, **kw):  # the exporter dies mid-write
        Path(f).write_bytes(b"partial")
        raise RuntimeError("serialization failed") from OSError(errno.ENOSPC, "No space left")

    with monkeypatch.context() as m:
        m.setattr(torch.onnx, "export", half_written_then_full)
        with pytest.raises(EdgekitError, match=r"cannot write .*model\.onnx: no space left"):
            export_onnx(model, x, target, exporter="torchscript", force=True, simplify=False)
    with monkeypatch.context() as m:
        m.setattr(torch.onnx, "export", real_export)
        m.setattr(onnx, "save", _enospc)
        with pytest.raises(EdgekitError, match="no space left on device"):
            export_onnx(model, x, target, exporter="torchscript", force=True, simplify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert target.read_bytes() == b"old"


def test_build_on_a_full_disk_then_recovers(box, tmp_path, monkeypatch, sentinel):
    from edgekit import fileio
    from edgekit.pipeline import Workspace, build

    ws = Workspace(copy_workspace(box / "work", tmp_path / "w"))
    real = os.replace

    def full_at_rename(src, dst):  # the manifest is written, the final rename fails
        if str(dst).endswith("ort-cpu"):
            _enospc()
        return real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(fileio.os, "replace", full_at_rename)
        with pytest.raises(EdgekitError, match=r"cannot write .*/ort-cpu: no space left"):
            build(ws, "ort-cpu")
        m.setattr(fileio.os, "replace", _enospc)  # the manifest write inside fails
        with pytest.raises(EdgekitError, match=r"manifest\.json: no space left"):
            build(ws, "ort-cpu")
    assert _parts(ws.root) == [] and not ws.artifact_dir("ort-cpu").exists()
    build(ws, "ort-cpu")
    assert (ws.artifact_dir("ort-cpu") / "manifest.json").is_file()


def test_cli_disk_faults_bench_report_export(box, tmp_path, sentinel):
    """bench prints its measured table before the failed write; report and export: one line."""
    from edgekit.harness import result_row
    from edgekit.report import write_report

    work = box / "work"
    rep = write_report(tmp_path / "in.json", [result_row(None, status="ok", target="x")], {}, {})
    bench = ["bench", "-w", work, "-t", "ort-cpu", "--no-baseline", "--in-process", "--quick"]
    bench += ["--min-duration", "0.01", "--batch-sizes", "1", "--threads", "1"]
    results = run_cli_batch(
        [
            {"args": [*bench, "-o", tmp_path / "b.json"], "enospc_on": "b.json"},
            {"args": ["report", rep, "-o", tmp_path / "rep"], "enospc_on": "report.csv"},
            {
                "args": ["export", "-w", tmp_path / "ex", "--dataset", f"npz:{_tiny(box)}"]
                + ["--model", "resnet8", "--epochs", "0", "--exporter", "torchscript"],
                "enospc_on": "model.onnx",
            },
        ]
    )
    assert_user_error(results[0], str(tmp_path / "b.json"), "no space left on device")
    assert "ort-cpu" in results[0]["stdout"] and "ok" in results[0]["stdout"]  # not lost
    assert_user_error(results[1], "report.csv", "no space left on device")
    assert_user_error(results[2], "model.onnx", "no space left on device")
    assert not (tmp_path / "b.json").exists()
    assert _parts(tmp_path) == []
    assert not (tmp_path / "ex" / "model.onnx").exists()


def _tiny(box: Path) -> str:
    return json.loads((box / "work" / "edgekit.json").read_text())["dataset"][len("npz:") :]


def test_stale_part_leftovers_are_cleaned_on_build(box, tmp_path, sentinel):
    from edgekit.pipeline import Workspace, build

    ws = Workspace(copy_workspace(box / "work", tmp_path / "w"))
    ws.artifacts.mkdir()
    stale = [ws.artifacts / ".ort-cpu.abc123.part", ws.root / ".model.onnx.x1.part"]
    stale[0].mkdir()
    (stale[0] / "model.onnx").write_bytes(b"half")
    stale[1].write_bytes(b"half")
    link = ws.artifacts / ".evil.part"
    os.symlink(sentinel / "victim", link)  # removing it must not follow it
    young = ws.root / ".report.json.y2.part"  # newer than this process: still being written?
    young.write_text("{}")
    keep = [ws.root / "notes.part", ws.artifacts / "mine.txt"]  # not edgekit's temporaries
    for k in keep:
        k.write_text("user")
    past = time.time() - 3600 * 24 * 365
    for p in [*stale, link]:
        os.utime(p, (past, past), follow_symlinks=False)
    os.utime(young, (time.time() + 60,) * 2)
    build(ws, "ort-cpu")
    assert not any(p.exists() or p.is_symlink() for p in [*stale, link])
    assert young.exists() and all(k.read_text() == "user" for k in keep)
    assert (sentinel / "victim" / "precious.bin").is_file()


def test_prepare_force_never_deletes_through_a_symlinked_artifacts_dir(box, tmp_path, sentinel):
    from edgekit.fileio import remove_tree

    (tmp_path / "w").mkdir()
    os.symlink(sentinel / "artifacts", tmp_path / "w" / "artifacts")
    remove_tree(tmp_path / "w" / "artifacts", tmp_path / "w")  # unlinks the link only
    assert not (tmp_path / "w" / "artifacts").is_symlink()
    with pytest.raises(EdgekitError, match="outside"):
        remove_tree(sentinel / "victim", tmp_path / "w")


# ---------------------------------------------------------------------------
# 3. Concurrency
# ---------------------------------------------------------------------------


def test_second_process_on_a_locked_work_dir_fails_at_once(box, sentinel, tmp_path):
    from edgekit.fileio import workdir_lock

    work = box / "work"
    before = tree_hash(work)
    spec = ["--dataset", f"npz:{_tiny(box)}", "--model", "resnet8", "--epochs", "0"]
    t0 = time.perf_counter()
    with workdir_lock(work):
        results = run_cli_batch(
            [
                {"args": ["build", "-t", "ort-cpu", "-w", work, "--force"]},
                {"args": ["export", "-w", work, "--force", *spec]},
                {"args": ["run", "-w", work, "--force", "--targets", "ort-cpu", *spec]},
            ]
        )
    assert time.perf_counter() - t0 < 120  # failed at once: nothing was trained or built
    for r in results:
        assert_user_error(r, "is in use by another edgekit process", f"(pid {os.getpid()})")
        assert "use another --work-dir" in r["stderr"]
    assert tree_hash(work) == before
    with workdir_lock(work), workdir_lock(work):  # released, and re-entrant in one process
        pass


# ---------------------------------------------------------------------------
# 4-6. Limits, overwrites, malformed input, exit status
# ---------------------------------------------------------------------------


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims ``width`` x ``height`` (never decoded here)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def test_image_size_bounded_before_decoding(tmp_path):
    from edgekit.infer import load_image

    for w, h in ((60_000, 60_000), (20_000, 1), (8_000, 8_000)):
        with pytest.raises(EdgekitError, match=f"{w}x{h} pixels, above the limit"):
            load_image(_png_claiming(tmp_path / f"big{w}x{h}.png", w, h), 32, 32)


def test_cli_limits_overwrites_and_malformed_input(box, sentinel, tmp_path):
    from edgekit.harness import available_cores
    from edgekit.harness import result_row as row
    from edgekit.report import write_report

    work = box / "work"
    art = work / "artifacts" / "ort-cpu"
    tiny = Path(_tiny(box))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "empty-test.npz", x=np.zeros((0, 32, 32, 3), np.uint8), y=np.zeros(0))
    np.savez(tmp_path / "big-test.npz", x=rng.integers(0, 255, (4, 64, 64, 3), np.uint8), y=[0] * 4)
    np.savez(
        tmp_path / "lab-test.npz", x=rng.integers(0, 255, (4, 32, 32, 3), np.uint8), y=[42] * 4
    )
    folder = tmp_path / "imgs"
    for split in ("train", "test"):
        (folder / split / "cat").mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (8, 8)).save(folder / split / "cat" / "ok.png")
    (folder / "train" / "cat" / "notes.png").write_text("not an image")
    broken = copy_workspace(work, tmp_path / "broken")
    broken.joinpath("model.onnx").write_bytes(work.joinpath("model.onnx").read_bytes()[:1000])
    existing = tmp_path / "mine.json"
    existing.write_text("user data")
    unavail = write_report(
        tmp_path / "u.json",
        [row(None, status="unavailable", target="trt-int8", reason="no TensorRT")],
        {},
        {},
    )
    fine = write_report(tmp_path / "ok.json", [row(None, status="ok", target="x")], {}, {})
    (tmp_path / "repfile").write_text("a file")
    cores = available_cores()
    spec = ["--dataset", f"npz:{tiny}", "--model", "resnet8"]
    bench = ["bench", "-a", art, "--in-process", "--quick", "--no-accuracy", "--threads", "1"]
    cases = [
        (["bench", "-a", art, "--threads", cores + 1], [f"more than the {cores} CPU cores"]),
        (["bench", "-a", art, "--threads", "10000"], [f"use --threads {cores} or fewer"]),
        (["infer", "-a", art, "-i", tiny / "tiny-test.npz", "--threads", "10000"], ["--threads"]),
        (["compare", art, art, "--threads", "0"], ["--threads must be at least 1"]),
        (
            ["infer", "-a", art, "-i", _png_claiming(tmp_path / "bomb.png", 60_000, 60_000)],
            ["60000x60000 pixels, above the limit"],
        ),
        ([*bench, "-o", existing], [str(existing), "already exists", "--force"]),
        (["report", fine, "-o", tmp_path / "repfile"], ["is a file, not a directory"]),
        (["export", "-w", tmp_path / "e1", *spec, "--seed", "-1"], ["--seed must be at least 0"]),
        (["export", "-w", tmp_path / "e2", *spec, "--epochs", "-1"], ["--epochs must be at least"]),
        (["run", "-w", tmp_path / "e3", *spec, "--epochs", "-1"], ["--epochs must be at least"]),
        (
            ["train", "-o", tmp_path / "e4", "--batch-size", "0"],
            ["--batch-size must be at least 1"],
        ),
        (["compare", art, art, "--images", "-5"], ["--images must be at least 1"]),
        ([*bench, "--min-queries", "0"], ["--min-queries must be at least 1"]),
        (
            ["export", "-w", tmp_path / "e5", "--dataset", f"npz:{tmp_path / 'empty-test.npz'}"],
            ["holds no images"],
        ),
        (
            [
                "export",
                "-w",
                tmp_path / "e6",
                "--dataset",
                f"imagefolder:{folder}",
                "--epochs",
                "0",
            ],
            ["notes.png", "cannot read"],
        ),
        (
            ["build", "-t", "ort-cpu", "-w", broken],
            [f"{broken / 'model.onnx'} is not a valid ONNX", "edgekit export --force"],
        ),
        ([*bench, "--dataset", f"npz:{tmp_path / 'big-test.npz'}"], ["64x64", "takes 32x32"]),
        ([*bench, "--dataset", f"npz:{tmp_path / 'lab-test.npz'}"], ["go up to 42", "10 classes"]),
    ]
    results = run_cli_batch([{"args": a} for a, _ in cases])
    for (_args, pats), r in zip(cases, results, strict=True):
        assert_user_error(r, *pats)
    assert existing.read_text() == "user data"
    assert (tmp_path / "repfile").read_text() == "a file"
    for d in ("e1", "e2", "e3", "e4", "e5", "e6"):
        assert not (tmp_path / d).exists(), d  # refused before creating anything
    assert not (broken / "artifacts").exists()
    # exit status of report: only unavailable rows -> 1; all ok -> 0; existing files -> 2
    out = tmp_path / "rep"
    results = run_cli_batch(
        [
            {"args": ["report", unavail, "-o", out]},
            {"args": ["report", fine, "-o", out]},
            {"args": ["report", fine, "-o", out, "--force"]},
            {"args": [*bench, "-o", existing, "--force"]},
        ]
    )
    assert_user_error(results[0], "trt-int8 unavailable: no TensorRT", code=1)
    # (an unavailable row beside an ok one: 0, see test_report.py's merged reports)
    assert_user_error(results[1], "already exists", "--force")
    assert results[2]["code"] == 0, results[2]["stderr"]
    assert results[3]["code"] == 0, results[3]["stderr"]
    assert json.loads(existing.read_text())["rows"][0]["status"] == "ok"


def test_run_exit_status_rule():
    """run: unavailable rows count only when the user asked for those targets."""
    from edgekit.cli import _exit_status

    rows = [{"target": "ort-cpu", "status": "ok"}, {"target": "trt", "status": "unavailable"}]
    assert _exit_status(rows, unavailable_counts=False) == 0  # run with default targets
    assert _exit_status(rows) == 1  # bench/report, or run --targets trt
    assert _exit_status([*rows, {"target": "ts", "status": "failed"}], False) == 1
    assert _exit_status(rows[:1]) == 0


# ---------------------------------------------------------------------------
# NaN weights
# ---------------------------------------------------------------------------


def test_nan_weights_are_named_for_export_and_ts_fx_int8(box, tmp_path):
    import torch

    from edgekit.export import export_onnx
    from edgekit.models import load_model, save_checkpoint
    from edgekit.pipeline import Workspace, build

    ws = Workspace(copy_workspace(box / "work", tmp_path / "w"))
    model, meta = load_model(None, ws.checkpoint, None)
    with torch.no_grad():
        model.linear.weight[0, :3] = float("nan")
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(
        EdgekitError, match=r"NaN/Inf outputs \(3 non-finite .* in linear\.weight\)"
    ):
        export_onnx(model, x, tmp_path / "m.onnx", exporter="torchscript", simplify=False)
    assert not any(p.name.startswith(".m.onnx") for p in tmp_path.iterdir())
    save_checkpoint(ws.checkpoint, model, meta["model"], meta["num_classes"], force=True)
    # the checkpoint is refused as it loads, naming the tensor (edgekit.models.check_finite)
    with pytest.raises(EdgekitError, match=r"tensor linear\.weight holds 3 NaN/Inf") as e:
        build(ws, "ts-fx-int8")
    assert "use an earlier checkpoint" in str(e.value)
    assert not (ws.artifacts / "ts-fx-int8").exists()
