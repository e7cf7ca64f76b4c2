"""``edgekit --help`` and every command's ``--help`` import no heavy runtime.

Each check runs in a fresh interpreter (the test process itself has torch
loaded), runs the CLI's ``main()`` with the arguments and then lists which of
the heavy modules ended up in ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "tensorrt", "sklearn", "matplotlib")

PROBE = """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["edgekit", *json.loads(sys.argv[1])]
from edgekit.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("\\n@@" + json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def _probe(args: list[str]) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "@@" in r.stdout, r.stderr[-2000:]
    return json.loads(r.stdout.rsplit("@@", 1)[1])


def _commands() -> list[str]:
    import typer.main

    from edgekit.cli import app

    return sorted(typer.main.get_command(app).commands)


def test_command_list_is_complete():
    cmds = _commands()
    for c in ("bench", "build", "export", "infer", "run", "targets"):
        assert c in cmds


@pytest.mark.parametrize("args", [["--help"]] + [[c, "--help"] for c in _commands()])
def test_help_imports_no_heavy_runtime(args):
    res = _probe(args)
    assert res["code"] == 0
    assert res["loaded"] == [], f"edgekit {' '.join(args)} imported {res['loaded']}"


def test_probe_detects_a_heavy_import():
    """The probe is not vacuous: a command that opens an ORT artifact does load onnxruntime."""
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, edgekit.backends.onnxruntime as m, onnxruntime;"
            "print('onnxruntime' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.stdout.strip() == "True"


def _cpu_seconds(cmd: list[str]) -> float:
    """User + system CPU seconds of one child process (os.wait4: this child only)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return ru.ru_utime + ru.ru_stime


def test_help_is_fast():
    """``edgekit --help`` costs under 0.5 s.

    Measured as the child's CPU time (best of 3), which a loaded shared CI
    machine does not inflate the way it inflates wall time;
    benchmarks/cli_startup.py reports both.
    """
    best = min(_cpu_seconds([sys.executable, "-m", "edgekit", "--help"]) for _ in range(3))
    assert best < 0.5, f"edgekit --help took {best:.3f} s of CPU"
