"""``edgekit doctor``: what this machine can do, before you wait for a build.

It reports the CPU (model, the ISA extensions that matter for INT8), cores and
memory, the CUDA GPUs (name, compute capability, memory, whether FP16 and INT8
are fast), the versions of the runtimes edgekit drives, and for every target
whether it can run here and, if not, why.

Every probe is optional and lazy: a missing package is reported as "not
installed" (``null`` in JSON), never an exception, so the command runs on a
bare device with only the core install. The GPU is queried through CUDA
(CuPy's runtime API, then ``torch.cuda``, then ``nvidia-smi``), not through
TensorRT, whose ``IBuilder.platform_has_fast_fp16/int8`` queries are deprecated
since TensorRT 10.5.

Which precisions are fast comes from the compute capability (sources: NVIDIA
CUDA C++ Programming Guide, "Arithmetic Instructions" throughput table and the
``__dp4a`` intrinsic; TensorRT Support Matrix, "Hardware and Precision"):

- FP16 at full rate: compute capability 5.3 (Tegra X1), 6.0, 6.2 (Tegra X2) and
  7.0 or newer; 6.1 (consumer Pascal) runs FP16 at 1/64 of FP32.
- FP16 tensor cores: 7.0 (Volta) or newer.
- INT8 dot product (``dp4a``): 6.1 or newer.
- INT8 tensor cores: 7.2 (Xavier) and 7.5 (Turing) or newer; Volta's 7.0
  tensor cores are FP16 only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from edgekit._meta import DIST_NAME

#: Version of the JSON layout written by ``edgekit doctor --json``.
SCHEMA_VERSION = 1

NOT_INSTALLED = "not installed"


# --------------------------------------------------------------------------- GPU rules


def precision_support(major: int, minor: int) -> dict:
    """Fast-precision flags of a CUDA compute capability ``major.minor``.

    Returns:
        ``{"fp16_fast", "fp16_tensor_cores", "int8_dp4a", "int8_tensor_cores",
        "int8_fast"}`` booleans; ``int8_fast`` is ``int8_dp4a`` (tensor cores
        make it faster still). See the module docstring for the sources.
    """
    cc = (major, minor)
    fp16_fast = cc in ((5, 3), (6, 0), (6, 2)) or cc >= (7, 0)
    dp4a = cc >= (6, 1)
    return {
        "fp16_fast": fp16_fast,
        "fp16_tensor_cores": cc >= (7, 0),
        "int8_dp4a": dp4a,
        "int8_tensor_cores": cc >= (7, 2),
        "int8_fast": dp4a,
    }


def _device(index: int, name: str, major: int, minor: int, memory_mb: float | None) -> dict:
    return {
        "index": index,
        "name": name,
        "compute_capability": f"{major}.{minor}",
        "memory_mb": None if memory_mb is None else round(float(memory_mb), 1),
        **precision_support(major, minor),
    }


def _cuda_version(v: int) -> str:
    """CUDA's integer version (1000*major + 10*minor) as ``"major.minor"``."""
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"


def _gpus_cupy() -> dict | None:
    if importlib.util.find_spec("cupy") is None:
        return None
    try:
        import cupy

        rt = cupy.cuda.runtime
        n = rt.getDeviceCount()
        devices = []
        for i in range(n):
            p = rt.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
            devices.append(_device(i, name, p["major"], p["minor"], p["totalGlobalMem"] / 2**20))
        return {
            "source": "cupy",
            "devices": devices,
            "cuda_runtime": _cuda_version(rt.runtimeGetVersion()),
            "cuda_driver": _cuda_version(rt.driverGetVersion()),
        }
    except Exception as e:  # no driver, no device: CuPy raises CUDARuntimeError
        return {"source": "cupy", "devices": [], "error": f"{type(e).__name__}: {e}"}


def _gpus_torch(torch) -> dict | None:
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return {"source": "torch", "devices": [], "error": "torch.cuda.is_available() is False"}
        devices = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(_device(i, p.name, p.major, p.minor, p.total_memory / 2**20))
        return {"source": "torch", "devices": devices, "cuda_runtime": torch.version.cuda}
    except Exception as e:
        return {"source": "torch", "devices": [], "error": f"{type(e).__name__}: {e}"}


def _gpus_nvidia_smi() -> dict | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    q = "name,compute_cap,memory.total,driver_version"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={q}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as e:
        return {"source": "nvidia-smi", "devices": [], "error": f"{type(e).__name__}: {e}"}
    devices, driver = [], None
    for i, line in enumerate(ln for ln in out.splitlines() if ln.strip()):
        name, cc, mem, driver = (s.strip() for s in line.split(","))
        major, _, minor = cc.partition(".")
        try:
            mem_mb = float(mem)
        except ValueError:  # "[N/A]" on integrated GPUs
            mem_mb = None
        devices.append(_device(i, name, int(major), int(minor or 0), mem_mb))
    return {"source": "nvidia-smi", "devices": devices, "cuda_driver": driver}


def gpu_info(torch=None) -> dict:
    """CUDA GPUs, from the first source that finds any: CuPy, nvidia-smi, torch.cuda.

    Args:
        torch: the imported torch module, or None when torch is not installed.

    Returns:
        ``{"available", "source", "devices": [...], "cuda_runtime", "cuda_driver",
        "reason"}``; ``reason`` says why no GPU was found (each source tried).
    """
    tried = []
    for probe in (_gpus_cupy, _gpus_nvidia_smi, lambda: _gpus_torch(torch)):
        r = probe()
        if r is None:
            continue
        if r["devices"]:
            return {
                "available": True,
                "source": r["source"],
                "devices": r["devices"],
                "cuda_runtime": r.get("cuda_runtime"),
                "cuda_driver": r.get("cuda_driver"),
                "reason": None,
            }
        tried.append(f"{r['source']}: {r.get('error', 'no device')}")
    reason = "; ".join(tried) if tried else "no CUDA probe available (no cupy, torch or nvidia-smi)"
    return {
        "available": False,
        "source": None,
        "devices": [],
        "cuda_runtime": None,
        "cuda_driver": None,
        "reason": f"no CUDA GPU found ({reason})",
    }


# --------------------------------------------------------------------------- CPU, memory


def memory_info() -> dict:
    """Total and available memory in MB (``/proc/meminfo``; None where unknown)."""
    out = {"total_mb": None, "available_mb": None}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k == "MemTotal":
                    out["total_mb"] = round(int(v.split()[0]) / 1024, 1)
                elif k == "MemAvailable":
                    out["available_mb"] = round(int(v.split()[0]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return out


def cpu_info() -> dict:
    """CPU model, ISA flags (:func:`edgekit.harness.cpu_flags`), logical and usable cores."""
    from edgekit.harness import cpu_flags

    f = cpu_flags()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    out = {
        "model": f["cpu"],
        "isa": dict(f["isa"]),
        "cores": os.cpu_count(),
        "cores_usable": usable,
    }
    # Under qemu-user emulation /proc/cpuinfo is the host's: an aarch64 process may
    # read x86 flags. Keep only the flags of this architecture and say so.
    arch = platform.machine().lower()
    x86, arm = ("avx2", "avx512", "vnni"), ("neon", "dotprod")
    foreign = (
        arm
        if arch in ("x86_64", "amd64", "i686")
        else x86
        if "arm" in arch or "aarch" in arch
        else ()
    )
    if any(out["isa"][k] for k in foreign):
        for k in foreign:
            out["isa"][k] = False
        out["note"] = f"/proc/cpuinfo describes another architecture than {arch} (emulation?)"
    return out


# --------------------------------------------------------------------------- software


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _import(name: str):
    """Import ``name`` if installed; returns ``(module or None, error or None)``.

    A namespace-only folder (e.g. the ``tensorrt/`` stubs of ``tensorrt-stubs``) counts
    as not installed (:func:`edgekit.backends.base.is_installed`).
    """
    from edgekit.backends.base import is_installed

    if not is_installed(name):
        return None, None
    try:
        return importlib.import_module(name), None
    except Exception as e:  # a broken install is reported, not raised
        return None, f"{type(e).__name__}: {e}"


def software_info(torch, torch_error: str | None) -> dict:
    """Versions of torch, onnxruntime, TensorRT and CuPy; ORT providers; torch qengines."""
    sw: dict = {}
    if torch is not None:
        q = torch.backends.quantized
        sw["torch"] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "quantized_engines": [e for e in q.supported_engines if e != "none"],
            "quantized_engine": q.engine,
            "error": None,
        }
    else:
        sw["torch"] = {
            "version": None,
            "cuda": None,
            "quantized_engines": [],
            "quantized_engine": None,
            "error": torch_error,
        }
    ort, err = _import("onnxruntime")
    sw["onnxruntime"] = {
        "version": getattr(ort, "__version__", None),
        "package": next((d for d in ("onnxruntime-gpu", "onnxruntime") if _version(d)), None),
        "providers": list(ort.get_available_providers()) if ort else [],
        "error": err,
    }
    trt, err = _import("tensorrt")
    sw["tensorrt"] = {"version": getattr(trt, "__version__", None), "error": err}
    cupy_dist = next((d for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy") if _version(d)), None)
    sw["cupy"] = {"version": _version(cupy_dist) if cupy_dist else None, "package": cupy_dist}
    sw["onnx"] = {"version": _version("onnx")}
    return sw


# --------------------------------------------------------------------------- targets


def target_status(gpu: dict, target_files=None) -> list[dict]:
    """Each target with ``runnable`` and, when False, the ``reason``.

    The backend's own check (:func:`edgekit.targets.unavailable_reason`: packages)
    comes first, then the device: a ``device = "cuda"`` target needs a CUDA GPU,
    and an FP16/INT8 one a GPU where that precision is fast.
    """
    from edgekit.targets import load_targets, unavailable_reason

    rows = []
    for t in load_targets(target_files).values():
        device = t.requires.get("device", "cpu")
        try:
            reason = unavailable_reason(t)
        except ImportError as e:
            reason = f"backend {t.backend!r} is not in this edgekit ({e})"
        if reason is None and device == "cuda":
            if not gpu["available"]:
                reason = gpu["reason"]
            elif t.precision in ("fp16", "int8"):
                key = f"{t.precision}_fast"
                slow = [d for d in gpu["devices"] if not d[key]]
                if len(slow) == len(gpu["devices"]):
                    d = slow[0]
                    reason = (
                        f"{t.precision.upper()} is not fast on {d['name']} "
                        f"(compute capability {d['compute_capability']})"
                    )
        rows.append(
            {
                "name": t.name,
                "backend": t.backend,
                "precision": t.precision,
                "device": device,
                "runnable": reason is None,
                "reason": reason,
            }
        )
    return rows


# --------------------------------------------------------------------------- problems


def problems(sw: dict) -> list[dict]:
    """What is installed but cannot work together, each with its fix.

    - GPU packages built for different CUDA majors (:mod:`edgekit.cuda_compat`);
    - TensorRT's Python bindings present but not for this Python, or failing to
      import (:mod:`edgekit.trt_python`).

    Args:
        sw: :func:`software_info`'s dict (its ``tensorrt`` entry is used).

    Returns:
        ``[{"problem": str, "fix": str}, ...]``, empty when all is well.
    """
    from edgekit.cuda_compat import installed_cuda_majors, mismatch_problem
    from edgekit.trt_python import bindings_problem

    out = []
    if p := mismatch_problem(installed_cuda_majors()):
        out.append(p)
    trt = sw["tensorrt"]
    if p := bindings_problem(trt["error"], imported=trt["version"] is not None):
        out.append(p)
    return out


# --------------------------------------------------------------------------- report


def int8_artifacts(paths, isa: dict) -> list[dict]:
    """Which INT8 artifacts under ``paths`` are safe on this CPU (:func:`edgekit.isa.artifact_safety`).

    Each path is an artifact directory, a work directory (its ``artifacts/*``) or a
    folder of artifact directories. A manifest that cannot be read is a row with the
    reason and ``safe_here`` None.
    """
    from edgekit.errors import EdgekitError
    from edgekit.isa import artifact_safety
    from edgekit.manifest import MANIFEST_NAME, read_manifest

    dirs: list[Path] = []
    for p in map(Path, paths or []):
        if not p.is_dir():
            raise EdgekitError(
                f"--artifacts {p}: not a directory", "give a work or artifact directory"
            )
        if (p / MANIFEST_NAME).is_file():
            dirs.append(p)
        else:
            base = p / "artifacts" if (p / "artifacts").is_dir() else p
            dirs += sorted(d for d in base.iterdir() if (d / MANIFEST_NAME).is_file())
    found, rows = [], []
    for d in dirs:
        try:
            found.append((str(d), read_manifest(d, verify=False)))
        except EdgekitError as e:
            rows.append(
                {"artifact": str(d), "target": None, "safe_here": None, "reason": e.message}
            )
    return artifact_safety(found, isa) + rows


def doctor(target_files=None, artifacts=None) -> dict:
    """The whole report as a JSON-able dict (the layout of ``edgekit doctor --json``).

    Never raises for a missing or broken package: those become ``null`` versions
    with an ``error`` string. Raises :class:`edgekit.errors.EdgekitError` only
    for an invalid ``--target-file``.
    """
    torch, torch_error = _import("torch")
    gpu = gpu_info(torch)
    cpu = cpu_info()
    sw = software_info(torch, torch_error)
    # The CUDA runtime/driver actually found (None without a GPU); torch's own
    # build version is in software.torch.cuda.
    sw["cuda"] = {"runtime": gpu["cuda_runtime"], "driver": gpu["cuda_driver"]}
    return {
        "schema_version": SCHEMA_VERSION,
        "edgekit": _version(DIST_NAME),
        "machine": {
            "arch": platform.machine(),
            "system": platform.system(),
            "python": platform.python_version(),
        },
        "cpu": cpu,
        "memory": memory_info(),
        "gpu": gpu,
        "software": sw,
        "targets": target_status(gpu, target_files),
        "problems": problems(sw),
        **({"int8_artifacts": int8_artifacts(artifacts, cpu["isa"])} if artifacts else {}),
    }


def _yn(v: bool) -> str:
    return "[green]yes[/green]" if v else "[red]no[/red]"


def _v(v) -> str:
    return str(v) if v else f"[dim]{NOT_INSTALLED}[/dim]"


def print_report(rep: dict, console=None) -> None:
    """Render :func:`doctor`'s report as rich tables."""
    from rich.console import Console
    from rich.markup import escape as esc
    from rich.table import Table

    con = console or Console()
    cpu, mem, sw = rep["cpu"], rep["memory"], rep["software"]

    t = Table(title="edgekit doctor: this machine", header_style="bold", show_header=False)
    t.add_column("item", style="bold")
    t.add_column("value")
    m = rep["machine"]
    t.add_row("machine", f"{m['arch']} {m['system']}, Python {m['python']}")
    t.add_row("CPU", esc(str(cpu["model"])))
    t.add_row("ISA", "  ".join(f"{k} {_yn(v)}" for k, v in cpu["isa"].items()))
    if cpu.get("note"):
        t.add_row("", f"[yellow]{esc(cpu['note'])}[/yellow]")
    t.add_row("cores", f"{cpu['cores']} logical, {cpu['cores_usable']} usable by this process")
    if mem["total_mb"]:
        t.add_row(
            "memory",
            f"{mem['total_mb'] / 1024:.1f} GiB, {mem['available_mb'] / 1024:.1f} available",
        )
    gpu = rep["gpu"]
    if gpu["available"]:
        for d in gpu["devices"]:
            mem_s = f"{d['memory_mb'] / 1024:.1f} GiB" if d["memory_mb"] else "shared memory"
            t.add_row(
                f"GPU {d['index']}",
                f"{esc(d['name'])}, compute capability {d['compute_capability']}, {mem_s} "
                f"(via {gpu['source']})",
            )
            t.add_row(
                "  fast precisions",
                f"FP16 {_yn(d['fp16_fast'])} (tensor cores {_yn(d['fp16_tensor_cores'])})  "
                f"INT8 {_yn(d['int8_fast'])} (dp4a {_yn(d['int8_dp4a'])}, "
                f"tensor cores {_yn(d['int8_tensor_cores'])})",
            )
    else:
        t.add_row("GPU", f"[yellow]none[/yellow]: {esc(gpu['reason'])}")
    tv = sw["torch"]
    t.add_row(
        "torch",
        _v(tv["version"]) + (f" [red]({esc(tv['error'])})[/red]" if tv["error"] else ""),
    )
    if tv["version"]:
        t.add_row(
            "  quantized engines",
            f"{', '.join(tv['quantized_engines']) or 'none'} (current: {tv['quantized_engine']})",
        )
    ov = sw["onnxruntime"]
    t.add_row(
        "onnxruntime",
        _v(ov["version"])
        + (f" ({ov['package']})" if ov["package"] else "")
        + (f" [red]({esc(ov['error'])})[/red]" if ov["error"] else ""),
    )
    if ov["version"]:
        t.add_row("  execution providers", ", ".join(ov["providers"]))
    t.add_row("TensorRT", _v(sw["tensorrt"]["version"]))
    cu = sw["cuda"]
    cuda_s = (
        f"runtime {cu['runtime'] or '?'}, driver {cu['driver'] or '?'}"
        if cu["runtime"] or cu["driver"]
        else "[dim]none found[/dim]"
    )
    if tv["cuda"]:
        cuda_s += f" (torch built for CUDA {tv['cuda']})"
    t.add_row("CUDA", cuda_s)
    t.add_row("CuPy", _v(sw["cupy"]["version"]))
    con.print(t)

    tt = Table(title="targets on this machine", header_style="bold")
    for c in ("target", "backend", "precision", "device", "runnable", "why not"):
        tt.add_column(c)
    for r in rep["targets"]:
        tt.add_row(
            r["name"],
            r["backend"],
            r["precision"],
            r["device"],
            _yn(r["runnable"]),
            esc(r["reason"] or ""),
        )
    con.print(tt)
    if "int8_artifacts" in rep:
        ta = Table(title="INT8 artifacts on this CPU", header_style="bold")
        for c in ("artifact", "target", "relies on", "safe here", "why", "kept in FP32"):
            ta.add_column(c)
        for r in rep["int8_artifacts"]:
            safe = r["safe_here"]
            ta.add_row(
                esc(r["artifact"]),
                esc(str(r.get("target") or "")),
                esc(str(r.get("requires") or "any x86/ARM CPU")),
                "[dim]unknown[/dim]" if safe is None else _yn(safe),
                esc(r["reason"] or ""),
                esc(", ".join(r.get("fp32_nodes") or []) or "-"),
            )
        con.print(ta)
    for p in rep.get("problems", []):
        con.print(f"[red]problem:[/red] {esc(p['problem'])}\n  [bold]fix:[/bold] {esc(p['fix'])}")
