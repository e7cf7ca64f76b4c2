"""ExecuTorch backend (et-xnnpack-int8): build, load, bench; refusals; unavailability."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from tests.test_cpu_targets import fp32_logits, write_target


def _need_executorch():
    from edgekit.backends import get_backend

    missing = get_backend("executorch").missing_packages()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (uv sync --extra executorch)")


@pytest.fixture(scope="module")
def et_artifact(tiny_workspace, tmp_path_factory):
    _need_executorch()
    from edgekit.pipeline import build

    f = write_target(tmp_path_factory.mktemp("et"), "et-xnnpack-int8", calib_per_class=4)
    return build(tiny_workspace, "et-xnnpack-int8", [f], force=True)


def test_et_builds_loads_and_benches(tiny_workspace, tiny_npz, et_artifact):
    from edgekit.build import open_artifact
    from edgekit.data import load_dataset
    from edgekit.harness import BenchConfig, bench_artifact
    from edgekit.preprocess import Preprocess

    m = et_artifact
    assert m["artifact"] == "model.pte" and m["io"]["batch"] == {"min": 1, "max": 1}
    assert m["calibration"]["images"] == 40 and m["calibration"]["split"] == "train"
    assert m["quantization"]["delegate"] == "XnnpackBackend"
    assert m["quantization"]["delegate_calls"] >= 1
    art = tiny_workspace.artifact_dir("et-xnnpack-int8")
    ds = load_dataset(f"npz:{tiny_npz}")
    runner, man = open_artifact(art, threads=1)
    try:
        x = Preprocess.from_dict(man["preprocess"]).apply(ds.test.x[:4])
        got = np.concatenate([runner(x[i : i + 1]) for i in range(4)])
        ref = fp32_logits(tiny_workspace, x)
        assert got.shape == (4, 10) and got.dtype == np.float32
        corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
        assert corr > 0.85, corr  # as test_openvino: INT8 of a barely trained net
    finally:
        runner.close()
    row = bench_artifact(art, ds.test, BenchConfig.quick(), threads=1)
    assert row["status"] == "ok" and row["top1"] is not None, row


def test_pte_without_xnnpack_delegate_is_refused(tiny_workspace, et_artifact, tmp_path):
    import shutil

    from edgekit.manifest import file_record, read_manifest

    d = tmp_path / "a"
    shutil.copytree(tiny_workspace.artifact_dir("et-xnnpack-int8"), d)
    data = (d / "model.pte").read_bytes().replace(b"XnnpackBackend", b"PortableBacken")
    (d / "model.pte").write_bytes(data)
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["model.pte"] = file_record(d / "model.pte")
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgekitError, match="no XnnpackBackend delegate"):
        read_manifest(d)


def test_delegate_check_on_bytes():
    from edgekit.backends.executorch import delegate_problem

    assert "not an ExecuTorch program" in delegate_problem(b"\x00" * 64)
    assert "no XnnpackBackend" in delegate_problem(b"<\x00\x00\x00ET12" + b"\x00" * 64)
    assert delegate_problem(b"<\x00\x00\x00ET12...XnnpackBackend...") is None


def test_unavailable_with_install_command_when_missing(monkeypatch):
    from edgekit.backends import base
    from edgekit.targets import get_target, unavailable_reason

    real = base.is_installed
    monkeypatch.setattr(base, "is_installed", lambda n: not n.startswith("executorch") and real(n))
    reason = unavailable_reason(get_target("et-xnnpack-int8"))
    assert "executorch.runtime" in reason and "edgekit-toolchain[executorch]" in reason, reason
