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

from edgekit._meta import DIST_NAME
from edgekit.errors import EdgekitError
from edgekit.fileio import sha256_file, write_json

MANIFEST_NAME = "manifest.json"
SCHEMA = "edgekit-manifest/1"
#: Keys every manifest must have.
REQUIRED = ("schema", "target", "backend", "precision", "artifact", "files", "io", "preprocess")


#: Packages whose versions are recorded in manifests and results (from metadata, not imported).
VERSIONED = (
    "edgekit",  # recorded under the import name; its distribution is DIST_NAME
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
            out[n] = metadata.version(DIST_NAME if n == "edgekit" else n)
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
        # every hashed file: an OpenVINO IR keeps its weights beside the .xml
        "size_bytes": sum(f["bytes"] for f in files.values()),
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


#: A file of an artifact: a plain name inside the artifact directory (no ``/``, no ``..``).
FILE_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}"


def manifest_schema():
    """The schema of ``manifest.json`` (:mod:`edgekit.schema`); options are checked by the backend."""
    from edgekit.backends import BACKENDS
    from edgekit.preprocess import preprocess_schema
    from edgekit.schema import AnyOf, Bool, Choice, Dict, Int, ListOf, MapOf, Num, Str
    from edgekit.targets import NAME_PATTERN, PRECISIONS, REQUIRES

    file_name = Str(FILE_NAME_PATTERN, forbidden=(MANIFEST_NAME,))
    dim = AnyOf(Int(min=1, max=1 << 20), Str(r"[A-Za-z_][A-Za-z0-9_]{0,63}"))
    info = Dict({}, extra=True, nullable=True)  # informational records: any keys, typed as tables
    return Dict(
        {
            "schema": Choice(SCHEMA, required=True),
            "target": Str(NAME_PATTERN, required=True),
            "backend": Choice(*BACKENDS, required=True),
            "precision": Choice(*PRECISIONS, required=True),
            "options": Dict({}, extra=True),
            "requires": REQUIRES,
            "artifact": Str(FILE_NAME_PATTERN, forbidden=(MANIFEST_NAME,), required=True),
            "files": MapOf(
                Dict(
                    {
                        "sha256": Str(r"[0-9a-f]{64}", required=True),
                        "bytes": Int(min=0, required=True),
                    }
                ),
                keys=file_name,
                required=True,
                min_items=1,
            ),
            "size_bytes": Int(min=0),
            "io": Dict(
                {
                    "input": Str(r"[^\x00]{1,256}", required=True),
                    "output": Str(r"[^\x00]{1,256}", required=True),
                    "input_shape": ListOf(dim, length=4, required=True),
                    "output_shape": ListOf(dim, length=2, required=True),
                    "dtype": Choice("float32"),
                    "batch": Dict(
                        {
                            "min": Int(min=1, max=1 << 20, required=True),
                            "max": Int(min=1, max=1 << 20, nullable=True, required=True),
                        },
                        nullable=True,
                    ),
                },
                required=True,
            ),
            "preprocess": preprocess_schema(required=True),
            "classes": ListOf(Str(), max_items=100_000, nullable=True),
            "source": info,
            "calibration": info,
            "versions": MapOf(Str(), nullable=True),
            "host": info,
            "built_at": Str(nullable=True),
            "build_seconds": Num(min=0, nullable=True),
            "build_arch": Str(nullable=True),
            "quantization": info,
            # the CPU instruction an INT8 artifact relies on (edgekit.isa.isa_record)
            "isa": Dict(
                {
                    "requires": Choice("vnni", nullable=True),
                    "saturation_safe": Bool(nullable=True),
                    "risky_weight_pairs": Int(min=0, nullable=True),
                    "kernel": Str(),
                    "note": Str(),
                },
                nullable=True,
            ),
            "quantized_engine": Choice("x86", "fbgemm", "onednn", "qnnpack"),
            "tensorrt": Dict({"env": Dict({}, extra=True)}, extra=True),
        }
    )


def check_manifest(m: dict, mpath: Path) -> None:
    """Type- and range-check a parsed manifest (:func:`manifest_schema`) and its cross-field rules.

    Rules beyond the schema: ``artifact`` is one of the hashed ``files``; the
    options are valid for the backend and precision (the backend's option spec);
    ``io.input_shape`` agrees with the preprocessing (3 channels, H x W); the
    class names (when given) are as many as ``io.output_shape[1]``; the batch range has ``min <= max``; only TorchScript INT8 records a quantized engine.

    Raises:
        EdgekitError: the first violation, naming ``mpath`` and the field path.
    """
    from edgekit.backends import get_backend
    from edgekit.schema import validate

    where = str(mpath)
    rebuild = "rebuild the artifact with edgekit build --force"
    validate(m, manifest_schema(), where, hint=rebuild)
    if m["artifact"] not in m["files"]:
        raise EdgekitError(
            f"{where}: artifact {m['artifact']!r} is not one of the hashed files "
            f"({', '.join(m['files'])}), so it could not be verified",
            rebuild,
        )
    get_backend(m["backend"], where=where).resolve_options(  # old spellings: no warning
        m["precision"], m.get("options", {}), where=where, warn=False
    )
    shape, pre = m["io"]["input_shape"], m["preprocess"]
    for i, (want, what) in enumerate(
        ((3, "channels"), (pre["height"], "height"), (pre["width"], "width")), 1
    ):
        if isinstance(shape[i], int) and shape[i] != want:
            raise EdgekitError(
                f"{where}: io.input_shape[{i}] ({what}) is {shape[i]} but the preprocessing "
                f"gives {want}",
                rebuild,
            )
    n_out = m["io"]["output_shape"][1]
    classes = m.get("classes")
    if classes and isinstance(n_out, int) and len(classes) != n_out:
        raise EdgekitError(
            f"{where}: classes lists {len(classes)} names but io.output_shape[1] is {n_out}",
            rebuild,
        )
    b = m["io"].get("batch")
    if b and b["max"] is not None and b["min"] > b["max"]:
        raise EdgekitError(f"{where}: io.batch.min {b['min']} > io.batch.max {b['max']}", rebuild)
    if "quantized_engine" in m and (m["backend"], m["precision"]) != ("torchscript", "int8"):
        raise EdgekitError(
            f"{where}: quantized_engine is only for torchscript int8 artifacts, not "
            f"{m['backend']} {m['precision']}",
            rebuild,
        )


def artifact_path(artifact_dir: str | Path, manifest: dict, name: str | None = None) -> Path:
    """The path of a hashed file of an artifact (``manifest["artifact"]`` by default).

    Runners open files only through this: the name must be a key of the manifest's
    ``files`` and resolve to a path inside ``artifact_dir`` (no symlink out of it).

    Raises:
        EdgekitError: the name is not hashed, or leaves the directory.
    """
    d = Path(artifact_dir)
    name = manifest["artifact"] if name is None else name
    files = manifest.get("files")
    if not isinstance(files, dict) or name not in files:
        raise EdgekitError(
            f"{d}: {name!r} is not one of the files hashed in its manifest",
            "rebuild the artifact with edgekit build --force",
        )
    p = d / name
    root = d.resolve()
    if p.resolve().parent != root:
        raise EdgekitError(
            f"{d}: {name} resolves to {p.resolve()}, outside the artifact directory",
            "an artifact's files must be plain files inside its directory; rebuild it",
        )
    return p


def read_manifest(artifact_dir: str | Path, verify: bool = True) -> dict:
    """Read and check an artifact directory's manifest.

    The manifest is checked against :func:`manifest_schema` (types, allowed
    values, ranges, unknown keys) and :func:`check_manifest`'s rules; every
    file it names must be a plain file inside the directory.

    Raises:
        EdgekitError: no directory, no manifest, malformed JSON, missing keys, a
            field of the wrong type or out of range, ``artifact`` not among the
            hashed ``files``, a file name that leaves the directory; with
            ``verify``: a file whose size or sha256 differs from the record, or a
            file in the directory that the manifest does not hash (a runtime
            could open it unverified, e.g. an ONNX external-data file).
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
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise EdgekitError(f"{mpath} is not valid JSON: {type(e).__name__}: {e}") from None
    except OSError as e:
        raise EdgekitError(f"cannot read {mpath}: {e.strerror or e}") from None
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
    check_manifest(m, mpath)
    for name in m["files"]:
        artifact_path(d, m, name)  # contained: no symlink out of the directory
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
        extra = sorted(p.name for p in d.iterdir() if p.name not in m["files"] and p != mpath)
        if extra:
            raise EdgekitError(
                f"{d}: {', '.join(extra)} not hashed in its manifest; a runtime could open "
                "it unverified",
                "remove it, or rebuild the artifact with edgekit build --force",
            )
        from edgekit.backends import get_backend

        get_backend(m["backend"]).verify_artifact(d, m)  # e.g. the engine inside the archive
    return m
