import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.models import (
    MODELS,
    build_model,
    load_model,
    read_checkpoint,
    save_checkpoint,
)


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet32"])
def test_cifar_resnets_shapes_and_params(name):
    m = build_model(name, 10).eval()
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    n = sum(p.numel() for p in m.parameters())
    # He et al. 2016 table 6: ResNet-20 0.27M, ResNet-32 0.46M parameters
    expected = {"resnet8": 0.075e6, "resnet20": 0.27e6, "resnet32": 0.46e6}[name]
    assert abs(n - expected) / expected < 0.03


def test_resnet18_cifar_stem():
    m = build_model("resnet18", 10)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, torch.nn.Identity)
    assert m.fc.out_features == 10
    tv = build_model("resnet18-tv", 100)
    assert tv.conv1.kernel_size == (7, 7) and tv.fc.out_features == 100


def test_zoo_lists_the_issue_models():
    for name in (
        "resnet18",
        "resnet18-tv",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet50",
    ):
        assert name in MODELS


def test_user_model_by_import_path():
    m = build_model("tests.usermodels:build", 7)
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    with pytest.raises(EdgekitError, match="not a torch.nn.Module"):
        build_model("tests.usermodels:not_a_model", 7)
    with pytest.raises(EdgekitError, match="cannot import"):
        build_model("tests.nomodule:build", 7)
    with pytest.raises(EdgekitError, match="unknown model 'resnet19'"):
        build_model("resnet19", 10)


def test_shared_resnet20_checkpoint_loads(resnet20_weights):
    model, meta = load_model("resnet20", resnet20_weights, 10)
    assert meta == {}
    assert model.linear.weight.shape == (10, 64)


def test_mismatched_checkpoint_names_the_keys(resnet20_weights):
    with pytest.raises(EdgekitError) as e:
        load_model("resnet32", resnet20_weights, 10)
    assert "missing keys: layer1.3" in str(e.value)
    with pytest.raises(
        EdgekitError, match=r"shape mismatches .*linear.weight \[10, 64\] vs \[100, 64\]"
    ):
        load_model("resnet20", resnet20_weights, 100)


def test_corrupt_and_missing_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(EdgekitError, match="cannot read checkpoint"):
        read_checkpoint(bad)
    with pytest.raises(EdgekitError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pt")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": Evil()}, p)
    with pytest.raises(EdgekitError, match="weights_only"):
        read_checkpoint(p)


def test_edgekit_checkpoint_roundtrip(tmp_path):
    m = build_model("resnet8", 10).eval()
    p = save_checkpoint(tmp_path / "m.pt", m, "resnet8", 10, classes=list("abcdefghij"))
    m2, meta = load_model(None, p, None)
    assert meta["model"] == "resnet8" and meta["classes"][0] == "a"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m(x), m2(x))
    with pytest.raises(EdgekitError, match="already exists"):
        save_checkpoint(p, m, "resnet8", 10)
    with pytest.raises(EdgekitError, match="not 'resnet20'"):
        load_model("resnet20", p, None)
