"""``manifest.json``: what an artifact is, how it was built, and how to feed it.

Every artifact directory holds one manifest beside its files. ``edgekit bench``
and ``edgekit infer`` need nothing else: the manifest names the backend, the
input/output tensors, the preprocessing and the class names. The sha256 and
size of every file are recorded, and :func:`read_manifest` refuses a directory
whose files no longer match (tampered, truncated or swapped).

This module uses the standard library only, so it works in the runtime install.
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.fileio import sha256_file, write_json

MANIFEST_NAME = "manifest.json"
SCHEMA = "edgekit-manifest/1"
#: Keys every manifest must have.
REQUIRED = ("schema", "target", "backend", "precision", "artifact", "files", "io", "preprocess")


#: Packages whose versions are recorded in manifests and results (from metadata, not imported).
VERSIONED = (
    "edgekit",
    "numpy",
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "cupy-cuda12x",
    "cupy-cuda13x",
    "openvino",
    "nncf",
)


def package_versions(names=VERSIONED) -> dict[str, str]:
    """Installed versions (from package metadata, without importing anything)."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def file_record(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def make_manifest(
    *,
    target: dict,
    artifact: str,
    artifact_dir: Path,
    io: dict,
    preprocess: dict,
    classes: list[str],
    source: dict,
    calibration: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Assemble a manifest for the files already written in ``artifact_dir``.

    Args:
        target: the resolved target (name, backend, precision, options, requires).
        artifact: the main file's name inside ``artifact_dir``.
        io: ``{"input": name, "output": name, "input_shape": [N|"batch", C, H, W],
            "dtype": "float32", "batch": {"min", "max"} or None}``.
        preprocess: :meth:`edgekit.preprocess.Preprocess.to_dict`.
        classes: class names, index = label.
        source: ``{"path", "sha256", "kind": "onnx"|"checkpoint", "model"}``.
        calibration: ``{"split", "per_class", "seed", "images", "method"}`` or None.
        extra: backend-specific fields (engine, quantized engine, GPU, ...).
    """
    files = {
        p.name: file_record(p)
        for p in sorted(artifact_dir.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }
    if artifact not in files:
        raise EdgekitError(f"internal: artifact file {artifact} was not written")
    return {
        "schema": SCHEMA,
        "target": target["name"],
        "backend": target["backend"],
        "precision": target["precision"],
        "options": target.get("options", {}),
        "requires": target.get("requires", {}),
        "artifact": artifact,
        "files": files,
        "size_bytes": files[artifact]["bytes"],
        "io": io,
        "preprocess": preprocess,
        "classes": classes,
        "source": source,
        "calibration": calibration,
        "versions": package_versions(),
        "host": {
            "machine": platform.machine(),
            "system": platform.system(),
            "python": platform.python_version(),
        },
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def write_manifest(artifact_dir: Path, manifest: dict) -> Path:
    return write_json(Path(artifact_dir) / MANIFEST_NAME, manifest, force=True)


def read_manifest(artifact_dir: str | Path, verify: bool = True) -> dict:
    """Read and check an artifact directory's manifest.

    Raises:
        EdgekitError: no directory, no manifest, malformed JSON, missing keys,
            or (with ``verify``) a file whose size or sha256 differs from the record.
    """
    d = Path(artifact_dir)
    if not d.is_dir():
        raise EdgekitError(f"artifact directory not found: {d}")
    mpath = d / MANIFEST_NAME
    if not mpath.is_file():
        raise EdgekitError(
            f"{d} has no {MANIFEST_NAME}; it is not an edgekit artifact",
            "build one with: edgekit build --target NAME",
        )
    try:
        m = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgekitError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(m, dict):
        raise EdgekitError(f"{mpath} is not a manifest object")
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise EdgekitError(
            f"{mpath} lacks {', '.join(missing)}", "rebuild the artifact with this edgekit version"
        )
    if not m["preprocess"]:
        raise EdgekitError(
            f"{mpath} has no preprocessing record, so inputs cannot be prepared as in calibration",
            "rebuild the artifact with this edgekit version",
        )
    if m["schema"] != SCHEMA:
        raise EdgekitError(f"{mpath} has schema {m['schema']!r}; this edgekit reads {SCHEMA}")
    if verify:
        for name, rec in m["files"].items():
            p = d / name
            if not p.is_file():
                raise EdgekitError(f"{d}: file {name} named in the manifest is missing")
            if p.stat().st_size != rec["bytes"] or sha256_file(p) != rec["sha256"]:
                raise EdgekitError(
                    f"{d}: {name} does not match its manifest (size or sha256 differs); "
                    "the artifact was modified or is incomplete",
                    "rebuild it with edgekit build --force",
                )
    return m
