import numpy as np
import onnx
import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.export import export_onnx
from edgekit.models import build_model


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_user_model_by_import_path(tmp_path, exporter):
    model = build_model("tests.usermodels:build", 10).eval()
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    out = tmp_path / "m.onnx"
    check = export_onnx(model, x, out, exporter=exporter)
    assert check.passed and check.max_abs_diff < 1e-4 and check.top1_agreement == 1.0
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ["input"]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not list(tmp_path.glob("*.data")) and not list(tmp_path.glob("*.part"))


def test_export_refuses_overwrite_and_old_opset(tmp_path):
    model = build_model("tests.usermodels:build", 10).eval()
    x = np.zeros((2, 3, 32, 32), np.float32)
    out = tmp_path / "m.onnx"
    out.write_text("user file")
    with pytest.raises(EdgekitError, match="already exists"):
        export_onnx(model, x, out, exporter="torchscript")
    assert out.read_text() == "user file"
    with pytest.raises(EdgekitError, match="opset 13 is too old"):
        export_onnx(model, x, tmp_path / "n.onnx", opset=13)


class _Mismatch(torch.nn.Module):
    """Exports fine but behaves differently in eager mode (a Python-side branch)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        y = self.fc(x.flatten(1))
        return y + (5.0 if self.calls > 1 else 0.0)


def test_numerical_mismatch_fails_and_leaves_nothing(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with pytest.raises(EdgekitError, match="differs from PyTorch"):
        export_onnx(
            _Mismatch().eval(), x, tmp_path / "m.onnx", exporter="torchscript", simplify=False
        )
    assert list(tmp_path.iterdir()) == []
