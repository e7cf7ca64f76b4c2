"""Issue 13, red-team round: the holes a second hostile campaign found, one case each.

Every CLI case asserts the exit status 2, the one ``error:`` line (its key words),
no traceback, and that a sentinel directory beside the work directories is
unchanged. The cases run in one subprocess (``run_cli_batch`` of
``test_hostile_fs``: one ``python -c`` calling ``edgekit.cli.main`` per case), each
on its own copy of a tiny work directory, so the whole file costs one interpreter
start plus a few builds.

Found and fixed in this round (severity as in the issue):

- critical: a target file's ``requires.packages = ["pkg.sub"]`` imported ``pkg``
  (ran its code) through ``find_spec``; ``WORK/artifacts`` or ``WORK/onnx-for-tensorrt`` as a symbolic link out
  of the work directory made ``build`` write there; a work-dir record's
  ``data_dir`` chose where torchvision downloads CIFAR to;
- high: an FP32 ONNX Runtime or TorchScript artifact relabelled ``precision: int8``
  was run and reported as INT8; a pytorch-fp32 build copied a corrupt or untrusted ``WORK/model.pt`` into an
  artifact with exit 0; a report row's ``status`` could be any word; fine-tuning with
  ``--lr nan`` wrote a NaN checkpoint with exit 0;
- medium: a label of 2**62 exhausted the memory, ``--min-duration inf``, an
  imagefolder FIFO or ``--finetune-minutes inf`` never ended, and malformed
  ``edgekit.json`` fields, 5,000-digit JSON integers, huge latencies in a report,
  ``--lr -1``/``--momentum -1``/``--label-smoothing 2``/``--seed 2**70``,
  ``--num-classes 10**9`` and ``train --out FILE`` gave tracebacks;
- medium: a path component over 255 bytes (``ENAMETOOLONG``) gave a traceback;
- low: ``bench -t NAME`` labelled the row with whatever target its manifest named;
  an error about a path holding a newline spanned two lines; labels beyond the classes scored as 0% by ``infer`` and ``compare``; a
  manifest whose class names disagree with its output shape; 16-bit images clipped
  silently in an imagefolder;
- high: ``export --force -w PROJECT`` deleted a user's own ``PROJECT/artifacts/``;
- medium: ``export --weights WORK/model.pt --force`` whose export failed deleted the
  user's weights with the half-made workspace; ``--norm nan,...`` was accepted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from tests.test_hostile_fs import (
    assert_user_error,
    copy_workspace,
    make_sentinel,
    run_cli_batch,
    tree_hash,
)


@pytest.fixture(scope="module")
def arena(tmp_path_factory, tiny_workspace):
    """``ROOT/base`` (tiny_workspace with ort-cpu built), ``ROOT/sentinel``."""
    from edgekit.pipeline import Workspace, build

    root = tmp_path_factory.mktemp("red")
    base = copy_workspace(tiny_workspace.root, root / "base")
    build(Workspace(base), "ort-cpu")
    build(Workspace(base), "ts-fp32")
    make_sentinel(root / "sentinel")
    return root


def _ws(root: Path, name: str) -> Path:
    dst = root / "cases" / name
    shutil.copytree(root / "base", dst, symlinks=True)
    return dst


def _edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _npz(path: Path, x, y=None) -> Path:
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    np.savez(path, **arrays)
    return path


def test_contained_within_refuses_a_root_that_is_a_link_out(tmp_path):
    from edgekit.fileio import contained

    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "work" / "artifacts")
    art = tmp_path / "work" / "artifacts"
    assert contained(art, "ort-cpu", component=True) == art / "ort-cpu"  # old rule: fooled
    with pytest.raises(EdgekitError, match="outside"):
        contained(art, "ort-cpu", component=True, within=tmp_path / "work")
    os.symlink(tmp_path / "elsewhere", tmp_path / "work" / "link")
    with pytest.raises(EdgekitError, match="is a symbolic link to"):
        contained(tmp_path / "work", "link", component=True)


def test_red_team_cases_are_one_error_line_and_touch_nothing_outside(arena, tmp_path, tiny_npz):
    root = arena
    sentinel = root / "sentinel"
    before = tree_hash(sentinel)
    cases: list[tuple[dict, tuple[str, ...]]] = []

    def case(args, *fragments, env=None, enospc_on=None):
        cases.append(({"args": args, "env": env or {}, "enospc_on": enospc_on}, fragments))

    # --- containment: symbolic links inside the work directory that lead out of it
    w = _ws(root, "artifacts-link")
    shutil.rmtree(w / "artifacts")
    os.symlink(sentinel, w / "artifacts")
    case(["build", "-t", "ort-cpu", "--force", "-w", w], "outside", "symbolic link")
    w = _ws(root, "trt-link")
    os.symlink(sentinel, w / "onnx-for-tensorrt")
    case(["build", "-t", "trt-fp16", "--onnx-only", "-w", w], "outside", "symbolic link")

    # --- WORK/edgekit.json: typed, and its paths never choose where edgekit writes
    w = _ws(root, "record-download")
    _edit_json(
        w / "edgekit.json", lambda r: r.update(dataset="cifar10", data_dir=str(sentinel / "dl"))
    )
    case(["bench", "-t", "ort-cpu", "--no-baseline", "--quick", "-w", w], "cannot load cifar10")
    w = _ws(root, "record-dataset-int")
    _edit_json(w / "edgekit.json", lambda r: r.update(dataset=5))
    case(["build", "-t", "ort-cpu", "--force", "-w", w], "edgekit.json: dataset must be a string")
    w = _ws(root, "record-classes")
    _edit_json(w / "edgekit.json", lambda r: r.update(classes=["a"]))
    case(["build", "-t", "ort-cpu", "--force", "-w", w], "classes lists 1 names", "num_classes")
    w = _ws(root, "record-list")
    (w / "edgekit.json").write_text("[1, 2]")
    case(["build", "-t", "ort-cpu", "--force", "-w", w], "the top level must be a table")

    # --- WORK/model.pt checked when the pytorch-fp32 baseline is built
    w = _ws(root, "pt-missing")
    (w / "model.pt").unlink()
    case(["build", "-t", "pytorch-fp32", "-w", w], "checkpoint not found")
    w = _ws(root, "pt-garbage")
    (w / "model.pt").write_bytes(b"garbage")
    case(["build", "-t", "pytorch-fp32", "-w", w], "cannot read checkpoint")
    w = _ws(root, "pt-factory")
    import torch

    ck = torch.load(w / "model.pt", weights_only=True)
    ck["model"] = "os:system"
    torch.save(ck, w / "model.pt")
    case(["build", "-t", "pytorch-fp32", "-w", w], "names the model factory 'os:system'")

    # --- export --weights WORK/model.pt --force that fails: the user's weights survive
    w = _ws(root, "own-weights")
    own = (w / "model.pt").read_bytes()
    case(
        ["export", "--weights", w / "model.pt", "-d", f"npz:{tiny_npz}", "-w", w, "--force"],
        "no space left",
        enospc_on="model.onnx",
    )
    norm_nan = ["--norm", "nan,0,0/1,1,1"]
    case(["export", "-d", f"npz:{tiny_npz}", "-w", tmp_path / "w4", *norm_nan], "(finite")

    # --- export --force into a project folder with its own artifacts/: refused, kept
    proj = tmp_path / "project"
    (proj / "artifacts" / "mine").mkdir(parents=True)
    (proj / "artifacts" / "mine" / "data.txt").write_text("precious")
    case(["export", "-d", f"npz:{tiny_npz}", "-w", proj, "--force"], "is not an edgekit artifact")

    # --- datasets and inputs
    base = root / "base"
    art = base / "artifacts" / "ort-cpu"
    x4 = np.zeros((4, 32, 32, 3), np.uint8)
    huge = _npz(tmp_path / "huge-label.npz", x4, np.array([0, 1, 2**62, 2]))
    case(["bench", "-a", art, "--quick", "--dataset", f"npz:{huge}"], "above the limit")
    far = _npz(tmp_path / "far.npz", x4, np.array([0, 1, 2, 55]))
    case(["compare", art, art, "--dataset", f"npz:{far}", "-w", base], "go up to 55")
    case(["infer", "-a", art, "-i", far], "go up to 55", "cannot be scored")
    from PIL import Image

    imf = tmp_path / "if"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (imf / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(imf / split / c / "0.png")
    os.mkfifo(imf / "test" / "a" / "pipe.png")  # opening it would block forever
    export = ["export", "--model", "resnet8", "--epochs", "0", "--exporter", "torchscript"]
    case([*export, "-d", f"imagefolder:{imf}", "-w", tmp_path / "w1"], "is not a regular file")
    imf16 = tmp_path / "if16"
    shutil.copytree(imf, imf16, ignore=shutil.ignore_patterns("pipe.png"))
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(imf16 / "test" / "a" / "deep.png")
    case([*export, "-d", f"imagefolder:{imf16}", "-w", tmp_path / "w2"], "16-bit or float")

    # --- manifests
    a2 = root / "cases" / "manifest-classes"
    shutil.copytree(art, a2)
    _edit_json(a2 / "manifest.json", lambda m: m.update(classes=["a", "b"]))
    case(["infer", "-a", a2, "-i", far], "classes lists 2 names but io.output_shape[1] is 10")
    for name, d, fields, fragment in (
        ("ort-relabel", art, {"precision": "int8"}, "has no quantized operator"),
        ("ts-relabel", base / "artifacts" / "ts-fp32", {"precision": "int8"}, "records no"),
    ):
        relabelled = root / "cases" / name
        shutil.copytree(d, relabelled)
        _edit_json(relabelled / "manifest.json", lambda m, f=fields: m.update(f))
        case(["infer", "-a", relabelled, "-i", far], fragment)
    w = _ws(root, "target-relabel")
    _edit_json(w / "artifacts" / "ort-cpu" / "manifest.json", lambda m: m.update(target="ts-fp32"))
    case(["bench", "-t", "ort-cpu", "--no-baseline", "--quick", "-w", w], "names target 'ts-fp32'")
    a3 = root / "cases" / "manifest-digits"
    shutil.copytree(art, a3)
    text = (a3 / "manifest.json").read_text()
    size = str(json.loads(text)["size_bytes"])
    (a3 / "manifest.json").write_text(text.replace(size, "9" * 5000, 1))
    case(["bench", "-a", a3, "--quick"], "is not valid JSON")

    # --- benchmark rules that would never end or never measure
    bench = ["bench", "-a", art, "--quick", "--no-accuracy"]
    case([*bench, "--min-duration", "inf"], "--min-duration must be")
    case([*bench, "--min-duration", "nan"], "--min-duration must be")
    case([*bench, "--min-queries", str(10**18)], "--min-queries must be at most")
    case([*bench, "--batch-sizes", "100000"], "above the limit of 65536")

    # --- reports
    row = {"target": "x", "status": "ok", "top1": 50.0, "latency_ms": {"p50": 1.0}}
    for name, r in {
        "status": {**row, "status": "great"},
        "latency_samples_ms": {**row, "latency_samples_ms": [1e308, 1.0]},
    }.items():
        f = tmp_path / f"report-{name}.json"
        f.write_text(json.dumps({"schema": "edgekit-report/1", "rows": [r]}))
        case(["report", f, "-o", tmp_path / f"out-{name}"], f"rows[0].{name}")

    # --- training and pruning values
    d = ["-d", f"npz:{tiny_npz}"]
    ck = base / "model.pt"
    (tmp_path / "a-file").write_text("keep")
    train = ["train", "--model", "resnet8", "--epochs", "1", *d]
    case([*train, "-o", tmp_path / "t", "--lr", "-1"], "--lr must be in (0, 100]")
    case([*train, "-o", tmp_path / "t", "--momentum", "-1"], "--momentum must be in [0, 1]")
    case([*train, "-o", tmp_path / "t", "--label-smoothing", "2"], "--label-smoothing")
    case([*train, "-o", tmp_path / "t", "--seed", str(2**70)], "--seed must be")
    case([*train, "-o", tmp_path / "t", "--val-fraction", "-0.5"], "--val-fraction")
    case([*train, "-o", tmp_path / "a-file"], "is a file")
    prune = ["prune", "--weights", ck, "-o", tmp_path / "p.pt", *d]
    case([*prune, "--lr", "nan", "--finetune-epochs", "1"], "--lr must be in (0, 100], got nan")
    case([*prune, "--finetune-minutes", "inf"], "--finetune-minutes must be > 0 and at most")
    case([*prune, "--kd-features", "nan", "--distill"], "--kd-features must be in [0, 1e6]")
    case([*prune, "--steps", str(10**6)], "steps must be in [1, 100]")
    case([*export, *d, "--num-classes", str(10**9), "-w", tmp_path / "w3"], "--num-classes")

    # --- a path too long for the file system: one error line, not an OSError traceback
    long = tmp_path / ("L" * 300)
    case(["bench", "-a", long], "file name too long")
    case([*export, "-d", f"npz:{tiny_npz}", "-w", long], "file name too long")

    # --- a path with a newline and a terminal escape: still one error line, escaped
    case(["targets", "--target-file", tmp_path / "a\nb\x1b[31m.toml"], "a\\nb\\x1b[31m.toml")

    results = run_cli_batch([c for c, _ in cases])
    failures = []
    for (c, fragments), res in zip(cases, results, strict=True):
        try:
            assert_user_error(res, *fragments)
        except AssertionError as e:
            failures.append(f"{' '.join(c['args'])}: {e}")
    assert not failures, "\n".join(failures)
    assert tree_hash(sentinel) == before, "a file outside the work directory changed"
    assert not (sentinel / "dl").exists() and not (sentinel / "ort-cpu").exists()
    assert (root / "cases" / "own-weights" / "model.pt").read_bytes() == own
    assert (proj / "artifacts" / "mine" / "data.txt").read_text() == "precious"
    assert not (tmp_path / "p.pt").exists() and (tmp_path / "a-file").read_text() == "keep"
    assert not any((tmp_path / n).exists() for n in ("w1", "w2", "w3", "w4", "t"))


def test_target_requires_packages_runs_no_code(tmp_path, monkeypatch):
    """``find_spec("pkg.sub")`` imports ``pkg``: a target file could run any module."""
    from edgekit.backends.base import is_installed
    from edgekit.targets import load_target_file, unavailable_reason

    (tmp_path / "evilpkg_red.py").write_text(
        f"open({str(tmp_path / 'RAN')!r}, 'w').write('code ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    f = tmp_path / "t.toml"
    f.write_text(
        'name = "x"\nbackend = "onnxruntime"\nprecision = "fp32"\n'
        '[requires]\npackages = ["evilpkg_red.sub", "onnxruntime.quantization"]\n'
    )
    reason = unavailable_reason(load_target_file(f))
    assert reason is not None and reason.startswith("evilpkg_red.sub not installed"), reason
    assert not (tmp_path / "RAN").exists(), "a target file's requires.packages ran code"
    assert is_installed("onnxruntime.quantization") and is_installed("evilpkg_red")
    assert not is_installed("evilpkg_red.sub") and not is_installed("no_such_pkg_x.y")
    assert not (tmp_path / "RAN").exists()
