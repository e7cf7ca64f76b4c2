"""One vocabulary (issue 15): option names shared across backends, old spellings warned."""

from __future__ import annotations

import pytest

from edgekit.errors import EdgekitError
from edgekit.targets import load_target_file, load_targets


def _target(tmp_path, name, backend, options: str):
    f = tmp_path / f"{name}.toml"
    f.write_text(
        f'name = "{name}"\nbackend = "{backend}"\nprecision = "int8"\n[options]\n{options}\n'
    )
    return f


def test_old_spellings_are_accepted_with_a_warning(tmp_path, capsys):
    ort = load_target_file(_target(tmp_path, "o", "onnxruntime", 'calibration_method = "Entropy"'))
    assert ort.options["calibration_method"] == "entropy"
    trt = load_target_file(
        _target(
            tmp_path,
            "t",
            "tensorrt",
            "calibration_per_class = 4\ncalibration_batch = 8\ncalibration_percentile = 99.9",
        )
    )
    assert (trt.options["calib_per_class"], trt.options["calib_batch"]) == (4, 8)
    assert trt.options["percentile"] == 99.9
    assert not any(k.startswith("calibration_p") for k in trt.options)
    err = capsys.readouterr().err
    assert "calibration_method = 'Entropy' is now spelled 'entropy'" in err
    assert "option calibration_per_class is now spelled calib_per_class" in err


def test_old_and_new_name_together_is_refused(tmp_path):
    f = _target(tmp_path, "t", "tensorrt", "calibration_per_class = 4\ncalib_per_class = 8")
    with pytest.raises(EdgekitError, match="same option"):
        load_target_file(f)


def test_builtin_targets_use_the_shared_names(capsys):
    targets = load_targets()
    assert capsys.readouterr().err == ""  # no built-in uses an old spelling
    per_class = {
        n: t.options.get("calib_per_class") for n, t in targets.items() if t.precision == "int8"
    }
    assert per_class and all(v is not None for v in per_class.values()), per_class
    methods = {t.options.get("calibration_method") for t in targets.values()} - {None}
    assert methods and all(m == m.lower() for m in methods)


def test_prune_cli_writes_into_the_out_directory_and_warns_for_the_old_file_form(
    tmp_path, tiny_npz
):
    from typer.testing import CliRunner

    from edgekit.cli import app
    from edgekit.models import build_model, save_checkpoint

    ck = save_checkpoint(tmp_path / "m.pt", build_model("resnet8", 10), "resnet8", 10)
    base = ["prune", "--weights", str(ck), "-d", f"npz:{tiny_npz}", "--ratio", "0.25"]
    r = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "p25")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p25" / "model.pt").is_file() and "now names" not in r.output
    r = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "old.pt")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "old.pt").is_file()
    assert "prune -o now names a directory" in r.output


def test_prune_output_path(tmp_path):
    from edgekit.cli import _prune_output

    assert _prune_output(tmp_path / "p50") == tmp_path / "p50" / "model.pt"
    assert not (tmp_path / "p50").exists()  # nothing written before the work
    assert _prune_output(tmp_path / "old.pt") == tmp_path / "old.pt"
    (tmp_path / "f").write_text("")
    with pytest.raises(EdgekitError, match="is a file"):
        _prune_output(tmp_path / "f")
