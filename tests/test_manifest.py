"""manifest.json: round-trip, what it records, tamper detection, missing manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError
from edgekit.fileio import sha256_file
from edgekit.manifest import MANIFEST_NAME, read_manifest


@pytest.fixture(scope="module")
def int8_artifact(tiny_workspace, tmp_path_factory):
    """ort-cpu-int8 built on the tiny workspace with 4 calibration images per class."""
    from edgekit.pipeline import build

    d = tmp_path_factory.mktemp("mf")
    f = d / "ort-cpu-int8.toml"
    text = (Path(__file__).resolve().parents[1] / "targets" / "ort-cpu-int8.toml").read_text()
    f.write_text(text.replace("calib_per_class = 32", "calib_per_class = 4"))
    m = build(tiny_workspace, "ort-cpu-int8", [f], force=True)
    art = d / "artifact"
    shutil.copytree(tiny_workspace.artifact_dir("ort-cpu-int8"), art)
    return art, m


def test_round_trip(int8_artifact):
    art, built = int8_artifact
    m = read_manifest(art)
    assert m == json.loads(json.dumps(built, default=str))


def test_records_what_issue_3_lists(int8_artifact, tiny_workspace):
    art, _ = int8_artifact
    m = read_manifest(art)
    # target and its resolved options (defaults filled in)
    assert m["target"] == "ort-cpu-int8" and m["backend"] == "onnxruntime"
    assert m["options"]["calib_per_class"] == 4
    assert m["options"]["quant_format"] == "QDQ" and m["options"]["per_channel"] is True
    # the source ONNX and its sha256
    assert m["source"]["onnx"]["sha256"] == sha256_file(tiny_workspace.onnx)
    # versions
    for pkg in ("edgekit", "torch", "onnx", "onnxruntime"):
        assert m["versions"].get(pkg), pkg
    # the calibration set
    cal = m["calibration"]
    assert (cal["per_class"], cal["images"], cal["split"], cal["seed"]) == (4, 40, "train", 0)
    assert cal["sampler"] == "class-balanced" and cal["method"] == "minmax"
    # artifact hash and size, build time
    f = art / m["artifact"]
    assert m["files"][m["artifact"]] == {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    assert m["size_bytes"] == f.stat().st_size
    assert m["built_at"].endswith("Z") and m["build_seconds"] > 0


def test_tampered_artifact_is_refused(int8_artifact, tmp_path):
    from edgekit.build import open_artifact

    art, m = int8_artifact
    bad = tmp_path / "bad"
    shutil.copytree(art, bad)
    p = bad / m["artifact"]
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    p.write_bytes(bytes(data))
    with pytest.raises(EdgekitError, match="does not match its manifest"):
        open_artifact(bad)
    read_manifest(bad, verify=False)  # the manifest itself is still readable


def test_swapped_file_is_refused(int8_artifact, tmp_path):
    art, m = int8_artifact
    bad = tmp_path / "swap"
    shutil.copytree(art, bad)
    (bad / m["artifact"]).write_bytes(b"not a model")
    with pytest.raises(EdgekitError, match="does not match its manifest"):
        read_manifest(bad)


def test_missing_manifest(int8_artifact, tmp_path):
    from edgekit.build import open_artifact

    art, _ = int8_artifact
    bad = tmp_path / "nomf"
    shutil.copytree(art, bad)
    (bad / MANIFEST_NAME).unlink()
    with pytest.raises(EdgekitError, match="has no manifest.json; it is not an edgekit artifact"):
        open_artifact(bad)


def test_missing_file_named_in_manifest(int8_artifact, tmp_path):
    art, m = int8_artifact
    bad = tmp_path / "nofile"
    shutil.copytree(art, bad)
    (bad / m["artifact"]).unlink()
    with pytest.raises(EdgekitError, match="named in the manifest is missing"):
        read_manifest(bad)


def test_cli_bench_tampered_exits_2(int8_artifact, tmp_path):
    import subprocess
    import sys

    art, m = int8_artifact
    bad = tmp_path / "clibad"
    shutil.copytree(art, bad)
    (bad / m["artifact"]).write_bytes(b"x")
    r = subprocess.run(
        [sys.executable, "-m", "edgekit", "bench", "--artifact", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "does not match its manifest" in r.stderr and "Traceback" not in r.stderr
