"""Issue 13, the schema half: crafted target files, manifests, checkpoints and reports.

Every case runs the CLI in a subprocess and asserts exit status 2, exactly one
``error:`` line naming what is wrong and where, no traceback, and that nothing
outside the work directory changed (a hash of a sentinel tree before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# --- helpers --------------------------------------------------------------------------


def tree_hash(root: Path) -> str:
    """sha256 over every path, file mode and file content under ``root``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_symlink():
            h.update(b"L" + os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def edgekit(*args, env=None, cwd=None):
    e = {k: v for k, v in os.environ.items() if k != "EDGEKIT_TRUSTED_MODELS"}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=e,
    )


class InProcess:
    """``edgekit.cli.main`` run in this process (no interpreter/torch start-up per case)."""

    def __init__(self, monkeypatch, capsys):
        self.monkeypatch, self.capsys = monkeypatch, capsys
        monkeypatch.delenv("EDGEKIT_TRUSTED_MODELS", raising=False)

    def __call__(self, *args):
        from edgekit.cli import main

        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "argv", ["edgekit", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
            raise SystemExit(0)
        cap = self.capsys.readouterr()
        return subprocess.CompletedProcess(args, e.value.code or 0, cap.out, cap.err)


@pytest.fixture()
def cli(monkeypatch, capsys):
    return InProcess(monkeypatch, capsys)


def assert_refused(res, *fragments):
    """Exit 2, one ``error:`` line holding every fragment, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def target_text(name="ok-target", backend="onnxruntime", precision="int8", extra=""):
    return f'name = "{name}"\nbackend = "{backend}"\nprecision = "{precision}"\n{extra}'


# --- fixtures: one tiny artifact per backend, built once ------------------------------


def _write_target(d: Path, name: str, **opts) -> Path:
    text = (REPO / "targets" / f"{name}.toml").read_text()
    for k, v in opts.items():
        text = text.replace(f"{k} = 32", f"{k} = {v}")
    f = d / f"{name}.toml"
    f.write_text(text)
    return f


@pytest.fixture(scope="module")
def built(tiny_workspace, tmp_path_factory):
    """ort-cpu, ts-fp32, ts-fx-int8 and pytorch-fp32 artifacts of the tiny model (copies)."""
    pytest.importorskip("onnxruntime")
    from edgekit.pipeline import build

    root = tmp_path_factory.mktemp("hostile-built")
    for name in ("ort-cpu", "ts-fp32", "ts-fx-int8", "pytorch-fp32"):
        files = [_write_target(root, name, calib_per_class=2)] if name == "ts-fx-int8" else None
        build(tiny_workspace, name, files, force=True)
        shutil.copytree(tiny_workspace.artifact_dir(name), root / name)
    batch = root / "batch.npz"
    np.savez(batch, x=np.zeros((2, 32, 32, 3), np.uint8))
    return root


@pytest.fixture()
def sandbox(tmp_path):
    """``tmp/sentinel`` (must not change) and a work dir two levels below ``tmp``."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("do not touch\n")
    work = tmp_path / "a" / "b" / "work"
    work.parent.mkdir(parents=True)
    return tmp_path, sentinel, work


def tamper(src: Path, dst: Path, fn) -> Path:
    """Copy an artifact and apply ``fn`` to its manifest (a dict) in place."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    fn(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def rehash(d: Path) -> None:
    """Rewrite the manifest's file records (what an attacker who edits files would do)."""
    from edgekit.fileio import sha256_file

    m = json.loads((d / "manifest.json").read_text())
    for name in m["files"]:
        p = d / name
        m["files"][name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    (d / "manifest.json").write_text(json.dumps(m))


# --- Found 1: a target name is an identifier, never a path ----------------------------


@pytest.mark.parametrize("name", ["<sentinel>", "../../x", "", "UPPER", "a/b", ".."])
def test_target_name_must_be_an_identifier(name, sandbox, tiny_workspace):
    tmp, sentinel, work = sandbox
    shutil.copytree(tiny_workspace.root, work, ignore=shutil.ignore_patterns("artifacts"))
    name = str(sentinel) if name == "<sentinel>" else name
    f = tmp / "evil.toml"
    f.write_text(target_text(name, "onnxruntime", "fp32"))
    before = tree_hash(tmp)
    assert_refused(edgekit("targets", "--target-file", f), f"{f}: name must")
    res = edgekit("build", "--target-file", f, "--target", name or "x", "-w", work, "--force")
    assert_refused(res, ": name must")
    assert tree_hash(tmp) == before  # nothing created, changed or deleted, in or outside WORK


def test_run_refuses_a_bad_target_file_before_any_work(sandbox, tiny_npz):
    tmp, sentinel, work = sandbox
    f = tmp / "evil.toml"
    f.write_text(target_text(str(sentinel), "onnxruntime", "fp32"))
    before = tree_hash(tmp)
    res = edgekit(
        "run", "--target-file", f, "-w", work, "-d", f"npz:{tiny_npz}", "--epochs", "1", "--force"
    )
    assert_refused(res, "evil.toml: name must be a string matching")
    assert tree_hash(tmp) == before and not work.exists()


def test_target_path_files_are_checked_too(sandbox):
    tmp, sentinel, _ = sandbox
    d = tmp / "targets"
    d.mkdir()
    (d / "evil.toml").write_text(target_text(str(sentinel), "onnxruntime", "fp32"))
    before = tree_hash(tmp)
    res = edgekit("targets", env={"EDGEKIT_TARGET_PATH": str(d)})
    assert_refused(res, "evil.toml: name must be a string matching")
    assert tree_hash(tmp) == before


# --- Found 7 and 9: typed target files ------------------------------------------------


@pytest.mark.parametrize(
    "backend,precision,extra,fragment",
    [
        (
            "onnxruntime",
            "fp32",
            "[options]\nexecution_provider = 42\n",
            "options.execution_provider",
        ),
        ("onnxruntime", "fp32", "description = 1\n", "description must be a string, got 1"),
        ("onnxruntime", "fp32", 'requires = "x"\n', 'requires must be a table/object, got "x"'),
        ("onnxruntime", "int8", '[options]\npercentile = "abc"\n', "options.percentile must be"),
        ("onnxruntime", "int8", "[options]\npercentile = 0\n", "> 0 and <= 100, got 0"),
        ("onnxruntime", "int8", "[options]\npercentile = nan\n", "options.percentile"),
        (
            "onnxruntime",
            "int8",
            '[options]\nper_channel = "no"\n',
            'options.per_channel must be a boolean (true/false), got "no"',
        ),
        (
            "onnxruntime",
            "int8",
            '[options]\nstrip_names = "no"\n',
            'options.strip_names must be a boolean (true/false), got "no"',
        ),
        (
            "onnxruntime",
            "fp32",
            '[requires]\npackages = "onnxruntime"\n',
            'requires.packages must be a list of import names such as onnxruntime, got "onnxrun',
        ),
        ("onnxruntime", "int8", "[options]\ncalib_per_class = true\n", "calib_per_class"),
        ("torchscript", "int8", '[options]\nengine = "tpu"\n', "options.engine must be one of"),
        ("tensorrt", "fp32", '[options]\nmax_batch = "128"\n', "options.max_batch"),
        ("tensorrt", "fp32", "[options]\ncuda_graph = 1\n", "options.cuda_graph must be a boolean"),
        ("onnxruntime", "fp64", "", "precision must be one of"),
        ("onnxruntime", "fp32", "color = 1\n", 'unknown key(s) "color"'),
    ],
)
def test_target_file_types(tmp_path, backend, precision, extra, fragment, cli):
    f = tmp_path / "t.toml"
    f.write_text(target_text("typed", backend, precision, extra))
    assert_refused(cli("targets", "--target-file", f), f"{f}: ", fragment)


def test_every_backend_option_has_a_spec_and_its_defaults_pass():
    from edgekit.backends import BACKENDS, get_backend
    from edgekit.schema import validate

    for name in BACKENDS:
        b = get_backend(name)
        for precision, defaults in b.option_defaults.items():
            assert set(defaults) <= set(b.option_specs), (name, precision)
            for k, v in defaults.items():
                validate(v, b.option_specs[k], name, k)  # raises on a bad default


# --- Found 2: the manifest is a schema ------------------------------------------------


def _files_key(key):
    def fn(m):
        m["files"][key] = dict(m["files"][m["artifact"]])

    return fn


MANIFEST_CASES = {
    "artifact-not-hashed": (
        lambda m: m.update(artifact="other.onnx"),
        "artifact 'other.onnx' is not one of the hashed files",
    ),
    "artifact-outside": (
        lambda m: m.update(artifact="../ort-cpu-int8/model.onnx"),
        "artifact must be a string matching",
    ),
    "files-absolute": (_files_key("/etc/passwd"), 'files.<key "/etc/passwd"> must be'),
    "files-dotdot": (_files_key("../x/model.onnx"), 'files.<key "../x/model.onnx"> must be'),
    "files-empty": (lambda m: m.update(files={}), "files must hold at least 1"),
    "files-list": (lambda m: m.update(files=["model.onnx"]), "files must be a table/object"),
    "files-string": (lambda m: m.update(files="model.onnx"), "files must be a table/object"),
    "io-string": (lambda m: m.update(io="input"), "io must be a table/object"),
    "options-string": (lambda m: m.update(options="fast"), "options must be a table/object"),
    "std-zero": (
        lambda m: m["preprocess"].update(std=[0, 1, 1]),
        "preprocess.std[0] must be a finite number > 0",
    ),
    "height-zero": (lambda m: m["preprocess"].update(height=0), "preprocess.height must be"),
    "mean-short": (lambda m: m["preprocess"].update(mean=[0.5]), "preprocess.mean must be"),
    "shape-vs-preprocess": (
        lambda m: m["io"].update(input_shape=["batch", 3, 64, 64]),
        "io.input_shape[2] (height) is 64 but the preprocessing gives 32",
    ),
    "backend-unknown": (lambda m: m.update(backend="evil"), "backend must be one of"),
    "ep-int": (lambda m: m["options"].update(execution_provider=42), "options.execution_provider"),
    "unknown-key": (lambda m: m.update(run_this="rm -rf /"), 'unknown key(s) "run_this"'),
    "batch-inverted": (
        lambda m: m["io"].update(batch={"min": 8, "max": 1}),
        "io.batch.min 8 > io.batch.max 1",
    ),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_tampered_manifest_is_refused(case, built, sandbox, cli):
    tmp, _, _ = sandbox
    fn, fragment = MANIFEST_CASES[case]
    art = tamper(built / "ort-cpu", tmp / "a" / "art", fn)
    shutil.copy(art / "model.onnx", art / "other.onnx") if case == "artifact-not-hashed" else None
    before = tree_hash(tmp)
    res = cli("infer", "-a", art, "-i", built / "batch.npz")
    assert_refused(res, fragment)
    assert tree_hash(tmp) == before


def test_deeply_nested_manifest_is_one_error_line(built, tmp_path, cli):
    art = tmp_path / "art"
    shutil.copytree(built / "ort-cpu", art)
    (art / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_refused(cli("infer", "-a", art, "-i", built / "batch.npz"), "is not valid JSON")


def test_bench_refuses_a_tampered_manifest_up_front(built, tmp_path):
    art = tamper(built / "ort-cpu", tmp_path / "art", lambda m: m.update(artifact="x.onnx"))
    assert_refused(edgekit("bench", "-a", art, "--quick"), "is not one of the hashed files")


def test_symlink_out_of_the_artifact_is_refused(built, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(built / "ort-cpu", art)
    outside = tmp_path / "outside.onnx"
    shutil.move(art / "model.onnx", outside)
    (art / "model.onnx").symlink_to(outside)
    assert_refused(edgekit("infer", "-a", art, "-i", built / "batch.npz"), "outside the artifact")


def test_unhashed_side_file_is_refused(built, tmp_path):
    """ONNX Runtime would open model.onnx.data unverified: every file must be hashed."""
    art = tmp_path / "art"
    shutil.copytree(built / "ort-cpu", art)
    (art / "model.onnx.data").write_bytes(b"\0" * 64)
    res = edgekit("infer", "-a", art, "-i", built / "batch.npz")
    assert_refused(res, "model.onnx.data not hashed in its manifest")


def _other_engine(built_engine: str) -> str:
    return {"x86": "fbgemm", "fbgemm": "x86", "onednn": "x86", "qnnpack": "x86"}[built_engine]


def test_torchscript_engine_relabel_is_refused(built, tmp_path):
    """The engine is bound to the hashed archive: a manifest relabelled to another engine
    of the same architecture (which passes the architecture check) is refused."""
    src = built / "ts-fx-int8"
    engine = json.loads((src / "manifest.json").read_text())["quantized_engine"]
    art = tamper(src, tmp_path / "art", lambda m: m.update(quantized_engine=_other_engine(engine)))
    res = edgekit("infer", "-a", art, "-i", built / "batch.npz")
    assert_refused(res, "the manifest says quantized_engine", f"records the {engine} engine")
    # and an engine added to an FP32 archive's manifest
    fp = built / "ts-fp32"
    art2 = tamper(fp, tmp_path / "art2", lambda m: m.update(quantized_engine="x86"))
    assert_refused(edgekit("infer", "-a", art2, "-i", built / "batch.npz"), "quantized_engine")


def test_qnnpack_relabelled_as_x86_is_refused(tiny_workspace, tmp_path):
    """Issue 13's case: an ARM (qnnpack) artifact relabelled x86 to run it on x86."""
    import torch

    from edgekit.pipeline import build

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the relabel matters on x86-64")
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch build lacks qnnpack, so no ARM artifact can be built here")
    f = _write_target(tmp_path, "ts-fx-int8", calib_per_class=2)
    f.write_text(f.read_text().replace('engine = "auto"', 'engine = "qnnpack"'))
    build(tiny_workspace, "ts-fx-int8", [f], force=True)
    art = tamper(
        tiny_workspace.artifact_dir("ts-fx-int8"),
        tmp_path / "art",
        lambda m: m.update(quantized_engine="x86"),
    )
    batch = tmp_path / "b.npz"
    np.savez(batch, x=np.zeros((1, 32, 32, 3), np.uint8))
    assert_refused(edgekit("infer", "-a", art, "-i", batch), "records the qnnpack engine")


# --- Found 3 and 7: checkpoints never choose code; typed metadata ----------------------


def _checkpoint(src: Path, dst: Path, fn) -> Path:
    import torch

    obj = torch.load(src, map_location="cpu", weights_only=True)
    fn(obj)
    torch.save(obj, dst)
    return dst


@pytest.mark.parametrize("factory", ["os:abort", "tempfile:mkdtemp"])
def test_checkpoint_cannot_name_code(factory, tiny_workspace, tiny_npz, built, sandbox):
    tmp, _, work = sandbox
    monitored = tmp / "tmpdir"
    monitored.mkdir()
    ck = _checkpoint(tiny_workspace.checkpoint, tmp / "evil.pt", lambda o: o.update(model=factory))
    env = {"TMPDIR": str(monitored)}
    before = tree_hash(tmp)
    res = edgekit("export", "--weights", ck, "-d", f"npz:{tiny_npz}", "-w", work, env=env)
    assert res.returncode != 134, "the factory was called"
    assert_refused(res, f"names the model factory {factory!r}", f"pass --model {factory}")
    # the same checkpoint inside a pytorch-fp32 artifact (re-hashed by the attacker)
    art = tmp / "art"
    shutil.copytree(built / "pytorch-fp32", art)
    shutil.copy(ck, art / "model.pt")
    rehash(art)
    before = tree_hash(tmp)
    for cmd in (["infer", "-a", art, "-i", built / "batch.npz"], ["bench", "-a", art, "--quick"]):
        res = edgekit(*cmd, env=env)
        assert res.returncode != 134, "the factory was called"
        assert_refused(res, f"names the model factory {factory!r}")
    assert tree_hash(tmp) == before  # mkdtemp made nothing in the monitored TMPDIR


def test_cli_model_option_trusts_the_users_factory(built, tmp_path):
    """infer of a pytorch-fp32 artifact whose checkpoint names a user factory: refused
    without --model, run with the user's own --model (Deliver 3: only a user's explicit
    --model may import code)."""
    from edgekit.models import build_model, save_checkpoint

    spec = "tests.usermodels:build"
    art = tmp_path / "art"
    shutil.copytree(built / "pytorch-fp32", art)
    (art / "model.pt").unlink()
    save_checkpoint(art / "model.pt", build_model(spec, 10), spec, 10, structure={})
    rehash(art)
    cmd = ["infer", "-a", art, "-i", built / "batch.npz", "--json"]
    assert_refused(edgekit(*cmd), f"names the model factory {spec!r}", f"pass --model {spec}")
    res = edgekit(*cmd, "--model", spec)
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["predictions"]) == 2


def test_user_named_factory_is_still_loaded(tmp_path):
    """The user's own --model package.module:factory keeps working (and is remembered)."""
    from edgekit.models import TRUST_ENV, build_model, load_model, save_checkpoint

    spec = "tests.usermodels:build"
    ck = save_checkpoint(tmp_path / "u.pt", build_model(spec, 10), spec, 10, structure={})
    old = os.environ.pop(TRUST_ENV, None)
    try:
        from edgekit.errors import EdgekitError

        with pytest.raises(EdgekitError, match="names the model factory"):
            load_model(None, ck, None)
        load_model(spec, ck, None)  # explicit: loads, and is trusted from now on
        assert spec in os.environ[TRUST_ENV].split(",")  # spawned children inherit it
        _, meta = load_model(None, ck, None)
        assert meta["model"] == spec
    finally:
        os.environ.pop(TRUST_ENV, None)
        if old is not None:
            os.environ[TRUST_ENV] = old


def _nan_weights(o):
    o["state_dict"]["conv1.weight"][0, 0, 0, 0] = float("nan")


CHECKPOINT_CASES = {
    "num-classes-text": (lambda o: o.update(num_classes="ten"), "num_classes must be an integer"),
    "num-classes-huge": (lambda o: o.update(num_classes=10**9), "<= 100000"),
    "model-int": (lambda o: o.update(model=5), "model must be a string"),
    "classes-int": (lambda o: o.update(classes=[1, 2]), "classes[0] must be a string"),
    "preprocess-std0": (
        lambda o: o.update(preprocess={**o["preprocess"], "std": [0, 0, 0]}),
        "preprocess.std[0] must be a finite number > 0",
    ),
    "structure-huge-dim": (
        lambda o: o.update(
            structure={"conv1": {"type": "Conv2d", "in": 3, "out": 2**20, "groups": 1}}
        ),
        "structure.conv1.out must be an integer >= 1 and <= 65536",
    ),
    "structure-256gb": (
        lambda o: o.update(
            structure={"layer1.0.conv1": {"type": "Conv2d", "in": 65536, "out": 65536, "groups": 1}}
        ),
        "so layer1.0.conv1.weight should be [65536, 65536, 3, 3]",
    ),
    "structure-no-type": (
        lambda o: o.update(structure={"conv1": {"in": 3}}),
        "structure.conv1.type is required",
    ),
    "structure-type": (
        lambda o: o.update(structure={"conv1": {"type": "Evil"}}),
        "structure.conv1.type must be one of",
    ),
    "nan-weights": (_nan_weights, "tensor conv1.weight holds 1 NaN/Inf value(s)"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_malformed_checkpoint_is_refused(case, tiny_workspace, tiny_npz, sandbox, cli):
    tmp, _, work = sandbox
    fn, fragment = CHECKPOINT_CASES[case]
    ck = _checkpoint(tiny_workspace.checkpoint, tmp / "bad.pt", fn)
    before = tree_hash(tmp)
    res = cli("export", "--weights", ck, "-d", f"npz:{tiny_npz}", "-w", work)
    assert_refused(res, str(ck), fragment)
    assert tree_hash(tmp) == before


def test_nan_weights_refused_when_building_ts_fx_int8(tiny_workspace, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(tiny_workspace.root, work, ignore=shutil.ignore_patterns("artifacts"))
    _checkpoint(work / "model.pt", work / "model.pt", _nan_weights)
    f = _write_target(tmp_path, "ts-fx-int8", calib_per_class=2)
    res = edgekit("build", "--target", "ts-fx-int8", "--target-file", f, "-w", work)
    assert_refused(res, "holds 1 NaN/Inf value(s)")
    assert not (work / "artifacts" / "ts-fx-int8").exists()


# --- reports --------------------------------------------------------------------------


GOOD_ROW = {"target": "ort-cpu", "status": "ok", "top1": 90.0, "latency_ms": {"p50": 1.0}}


@pytest.mark.parametrize(
    "report,fragment",
    [
        ({"schema": "edgekit-report/1", "rows": "x"}, "rows must be a list"),
        ({"schema": "edgekit-report/1", "rows": [5]}, "rows[0] must be a table/object"),
        (
            {"schema": "edgekit-report/1", "rows": [{**GOOD_ROW, "top1": "high"}]},
            'rows[0].top1 must be a finite number >= 0 and <= 100 or null, got "high"',
        ),
        (
            {"schema": "edgekit-report/1", "rows": [{**GOOD_ROW, "latency_ms": {"p50": "1"}}]},
            "rows[0].latency_ms.p50 must be",
        ),
        ({"schema": "edgekit-report/1", "rows": [{"status": "ok"}]}, "rows[0].target is required"),
        (
            {"schema": "edgekit-report/1", "rows": [GOOD_ROW], "meta": {"labels": "abc"}},
            "meta.labels must be a list",
        ),
        (
            {"schema": "edgekit-report/1", "rows": [{**GOOD_ROW, "latency_ms": {}}]},
            "rows[0].latency_ms.p50 is required",
        ),
        (
            {
                "schema": "edgekit-report/1",
                "rows": [{**GOOD_ROW, "predictions": [0, 10**9]}],
                "meta": {"labels": [0, 1], "classes": ["a", "b"]},
            },
            "rows[0].predictions holds class index 1000000000, but there are only 2 classes",
        ),
        (
            {"schema": "edgekit-report/1", "rows": [], "environment": {"gpus": "H100"}},
            "environment.gpus must be a list of strings",
        ),
    ],
)
def test_malformed_report_is_refused(tmp_path, report, fragment, cli):
    f = tmp_path / "r.json"
    f.write_text(json.dumps(report))
    res = cli("report", f, "-o", tmp_path / "out")
    assert_refused(res, f"{f}: ", fragment)
    assert not (tmp_path / "out").exists()


# --- architecture and start-up --------------------------------------------------------


def test_schema_modules_are_light_and_structure_does_not_import_models():
    code = (
        "import sys, edgekit.schema, edgekit.manifest, edgekit.targets, edgekit.report\n"
        "heavy = [m for m in ('torch', 'onnx', 'pydantic') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import edgekit.structure\n"
        "assert 'edgekit.models' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
