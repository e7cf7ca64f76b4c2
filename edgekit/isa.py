"""The CPU instruction an INT8 artifact relies on, recorded at build and checked at load.

An ONNX Runtime U8S8 model (uint8 activations, int8 weights) runs on x86 through
MLAS. With VNNI (AVX-512 VNNI or AVX-VNNI) the products are accumulated in int32;
without it (AVX2, AVX-512 without VNNI) ``vpmaddubsw`` adds each adjacent pair of
products into a saturating int16 (see :mod:`edgekit.saturation`). So the *same*
artifact can give another top-1 on another CPU, unless no weight pair can saturate:
two same-sign weights with ``|w0| + |w1| >= 129`` (never with ``reduce_range``'s
7-bit weights).

The manifest's ``isa`` record::

    {"requires": "vnni" | None, "saturation_safe": bool | None,
     "risky_weight_pairs": int | None, "kernel": "U8S8" | ..., "note": str}

``requires = "vnni"``: built for a VNNI CPU; on another x86 CPU its top-1 may drop.
``saturation_safe = None``: a kernel form this check does not analyse (S8S8, U8U8).
ARM CPUs run other MLAS kernels (no ``vpmaddubsw``); the check applies to x86 only.

Runtime-safe: imports only the standard library and :mod:`edgekit.harness`'s
``/proc/cpuinfo`` reader (no torch, no onnx).
"""

from __future__ import annotations

import platform

VNNI = "vnni"
#: (activation_type, weight_type) -> MLAS kernel form
KERNELS = {
    ("QUInt8", "QInt8"): "U8S8",
    ("QInt8", "QInt8"): "S8S8",
    ("QUInt8", "QUInt8"): "U8U8",
    ("QInt8", "QUInt8"): "S8U8",
}


def isa_record(opts: dict, risky_pairs: int | None) -> dict:
    """The ``isa`` manifest record of an ONNX Runtime INT8 build.

    Args:
        opts: the resolved ``ort-cpu-int8`` options (``activation_type``,
            ``weight_type``, ``reduce_range``).
        risky_pairs: weight pairs that can saturate int16
            (:func:`edgekit.saturation.risky_weight_pairs`), or None if not counted.
    """
    kernel = KERNELS.get((opts["activation_type"], opts["weight_type"]), "other")
    if kernel != "U8S8":
        return {
            "requires": None,
            "saturation_safe": None,
            "risky_weight_pairs": None,
            "kernel": kernel,
            "note": f"{kernel} does not use the U8S8 vpmaddubsw path; not analysed",
        }
    safe = risky_pairs == 0
    note = (
        "no int8 weight pair can exceed int16 with uint8 activations: same top-1 on every x86 CPU"
        if safe
        else f"{risky_pairs} weight pair(s) can exceed int16 in vpmaddubsw on x86 CPUs "
        "without VNNI (AVX2, AVX-512 without VNNI): top-1 may drop there; "
        "reduce_range = true avoids it"
    )
    return {
        "requires": None if safe else VNNI,
        "saturation_safe": safe,
        "risky_weight_pairs": risky_pairs,
        "kernel": kernel,
        "note": note,
    }


def host_is_x86() -> bool:
    from edgekit.harness import X86

    return platform.machine().lower() in X86


def isa_problem(manifest: dict, isa: dict | None = None, x86: bool | None = None) -> str | None:
    """Why this CPU lacks what the artifact relies on; None when it has it (or no record).

    Args:
        manifest: the artifact's manifest.
        isa: :func:`edgekit.harness.cpu_flags` ``["isa"]`` (read here when None).
        x86: whether the host is x86 (``platform.machine()`` when None).
    """
    rec = manifest.get("isa") or {}
    if rec.get("requires") != VNNI:
        return None
    if x86 is None:
        x86 = host_is_x86()
    if not x86:
        return None
    if isa is None:
        from edgekit.harness import cpu_flags

        isa = cpu_flags()["isa"]
    if isa.get("vnni"):
        return None
    n = rec.get("risky_weight_pairs")
    return (
        f"{manifest.get('target', 'this artifact')} was built for a CPU with VNNI "
        f"(AVX-512 VNNI or AVX-VNNI) and this CPU has none: "
        f"{n if n is not None else 'some'} int8 weight pair(s) can saturate int16 here, "
        "so top-1 may be lower than measured at build; rebuild with reduce_range = true"
    )


def artifact_safety(manifests: list[tuple[str, dict]], isa: dict | None = None) -> list[dict]:
    """For ``edgekit doctor``: each INT8 artifact and whether it is safe on this CPU.

    Args:
        manifests: ``(artifact directory, manifest)`` pairs.

    Returns:
        ``[{"artifact", "target", "requires", "saturation_safe", "safe_here",
        "reason", "fp32_nodes"}]`` for the ``int8`` manifests only; ``safe_here`` is
        None when the artifact carries no ISA record (built before it existed) or a
        kernel form that is not analysed.
    """
    rows = []
    for where, m in manifests:
        if m.get("precision") != "int8":
            continue
        rec = m.get("isa")
        problem = isa_problem(m, isa) if rec else None
        if rec is None:
            safe, reason = None, "no ISA record in the manifest (built before edgekit recorded it)"
        elif problem:
            safe, reason = False, problem
        elif rec.get("saturation_safe") is None and rec.get("requires") is None:
            safe, reason = None, rec.get("note", "")
        elif rec.get("requires") == VNNI:
            safe, reason = (
                True,
                "relies on VNNI, which this CPU has (or not x86); " + rec.get("note", ""),
            )
        else:
            safe, reason = True, rec.get("note", "")
        rows.append(
            {
                "artifact": where,
                "target": m.get("target"),
                "requires": rec.get("requires") if rec else None,
                "saturation_safe": rec.get("saturation_safe") if rec else None,
                "safe_here": safe,
                "reason": reason,
                "fp32_nodes": (m.get("quantization") or {}).get("fp32_nodes"),
            }
        )
    return rows
