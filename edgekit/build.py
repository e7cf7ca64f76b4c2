"""Build one target into an artifact directory, and open artifact directories.

``build_target`` is the only place artifacts are written: the backend's builder
writes into a temporary directory, the manifest is added, and the directory is
renamed into place, so a failed build never leaves a directory that looks valid.
"""

from __future__ import annotations

import time
from pathlib import Path

from edgekit.backends import get_backend
from edgekit.backends.base import BuildContext, Runner
from edgekit.errors import UnavailableError
from edgekit.fileio import atomic_dir, sha256_file
from edgekit.manifest import make_manifest, read_manifest, write_manifest
from edgekit.targets import Target, unavailable_reason


def source_record(ctx: BuildContext) -> dict:
    rec: dict = {}
    if ctx.onnx_path is not None:
        rec["onnx"] = {"path": str(ctx.onnx_path), "sha256": sha256_file(ctx.onnx_path)}
    if ctx.checkpoint_path is not None:
        rec["checkpoint"] = {
            "path": str(ctx.checkpoint_path),
            "sha256": sha256_file(ctx.checkpoint_path),
        }
    return rec


def build_target(
    target: Target, ctx: BuildContext, out_dir: str | Path, force: bool = False
) -> dict:
    """Build ``target`` into ``out_dir`` (atomically) and return its manifest.

    Raises:
        UnavailableError: the backend, a package or the hardware is missing here.
        EdgekitError: ``out_dir`` exists without ``force``, or the build failed.
    """
    reason = unavailable_reason(target)
    if reason:
        raise UnavailableError(f"target {target.name} is unavailable here: {reason}")
    backend = get_backend(target.backend)
    with atomic_dir(out_dir, force=force) as tmp:
        t0 = time.perf_counter()
        res = backend.build(ctx, target, tmp)
        build_seconds = round(time.perf_counter() - t0, 3)
        manifest = make_manifest(
            target=target.to_dict(),
            artifact=res.artifact,
            artifact_dir=tmp,
            io=res.io,
            preprocess=ctx.preprocess.to_dict(),
            classes=list(ctx.classes),
            source=source_record(ctx),
            calibration=res.calibration,
            extra={**res.extra, "build_seconds": build_seconds},
        )
        write_manifest(tmp, manifest)
    return manifest


def open_artifact(artifact_dir: str | Path, threads: int | None = None) -> tuple[Runner, dict]:
    """Verify an artifact directory's manifest and load it with its backend's runner.

    Raises:
        EdgekitError: no/invalid manifest, hash mismatch, or the backend's runtime
            is not installed (the message names the extra to install).
    """
    d = Path(artifact_dir)
    manifest = read_manifest(d, verify=True)
    backend = get_backend(manifest["backend"])
    reason = backend.runtime_unavailable_reason(manifest)
    if reason:
        raise UnavailableError(f"cannot run {manifest['target']} here: {reason}")
    return backend.load(d, manifest, threads), manifest
