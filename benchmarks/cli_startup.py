"""``edgekit --help`` start-up: wall and CPU time, and what it imports.

Bar (issue 8): ``edgekit --help`` returns in under 0.5 s and imports no torch,
onnx, onnxruntime or tensorrt. Each run is a fresh child process; wall time is
measured around it, CPU time (user + system) comes from ``os.wait4`` for that
child only. On a loaded machine wall time exceeds CPU time by the time spent
waiting for a core; on an idle one they are close.

Usage::

    python benchmarks/cli_startup.py [--python PY] [--reps 10]

The import tree itself: ``python -X importtime -m edgekit --help 2> imports.txt``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "tensorrt", "sklearn", "matplotlib")


def one(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed")
    return wall, ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    probe = (
        "import sys; sys.argv=['edgekit','--help']\n"
        "from edgekit.cli import main\n"
        "try: main()\nexcept SystemExit: pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)"
    )
    heavy = subprocess.run(
        [a.python, "-c", probe], capture_output=True, text=True, check=True
    ).stderr.strip()
    cmds = {
        "python -c pass": [a.python, "-c", "pass"],
        "edgekit --help": [a.python, "-m", "edgekit", "--help"],
        "edgekit bench --help": [a.python, "-m", "edgekit", "bench", "--help"],
    }
    print(f"python {a.python}; heavy modules imported by --help: {heavy}")
    print(
        f"{'command':22s} {'wall p50 s':>10s} {'wall min':>9s} {'cpu p50 s':>10s} {'cpu min':>8s}  (n={a.reps})"
    )
    for name, cmd in cmds.items():
        runs = [one(cmd) for _ in range(a.reps)]
        wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
        print(
            f"{name:22s} {statistics.median(wall):10.3f} {min(wall):9.3f} "
            f"{statistics.median(cpu):10.3f} {min(cpu):8.3f}"
        )


if __name__ == "__main__":
    main()
