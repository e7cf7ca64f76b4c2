"""Declarative targets: one TOML file per target, validated against its backend.

A target file looks like::

    name = "ort-cpu-int8"
    backend = "onnxruntime"          # a module in edgekit/backends
    precision = "int8"               # fp32 | fp16 | int8
    description = "..."

    [requires]
    device = "cpu"                   # cpu | cuda
    packages = ["onnxruntime"]       # import names checked for availability

    [options]                        # backend options; unknown keys are an error
    quant_format = "QDQ"

Built-in targets ship in the package (``targets/`` in the source tree). Users add
their own with ``--target-file FILE`` or by putting files in a directory listed
in ``EDGEKIT_TARGET_PATH`` (``:``-separated); a user file with a built-in's name
replaces it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.schema import Choice, Dict, Field, ListOf, Str, validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser, from the tomli package
    import tomli as tomllib

PRECISIONS = ("fp32", "fp16", "int8")
#: A target name is an identifier, never a path: it names ``WORK/artifacts/NAME``.
NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
NAME = Str(NAME_PATTERN, forbidden=(".", ".."))
#: ``[requires]``: the device and the import names the target needs.
REQUIRES = Dict(
    {
        "device": Choice("cpu", "cuda"),
        "packages": ListOf(
            Str(
                r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*",
                doc="an import name such as onnxruntime",
            )
        ),
    }
)


def target_schema() -> Field:
    """The schema of a target file (``[options]`` is checked by the backend's spec)."""
    from edgekit.backends import BACKENDS

    return Dict(
        {
            "name": Str(NAME_PATTERN, forbidden=(".", ".."), required=True),
            "backend": Choice(*BACKENDS, required=True),
            "precision": Choice(*PRECISIONS, required=True),
            "description": Str(),
            "notes": Str(),
            "requires": REQUIRES,
            "options": Dict({}, extra=True),
        }
    )


TOP_KEYS = {"name", "backend", "precision", "description", "requires", "options", "notes"}


@dataclass
class Target:
    """One target: the backend that builds and runs it and its resolved options."""

    name: str
    backend: str
    precision: str
    description: str = ""
    options: dict = field(default_factory=dict)
    requires: dict = field(default_factory=dict)
    notes: str = ""
    path: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "backend": self.backend,
            "precision": self.precision,
            "options": self.options,
            "requires": self.requires,
            "path": self.path,
        }


def builtin_dir() -> Path:
    """The built-in target files: ``edgekit/_targets`` when installed, ``targets/`` in a checkout."""
    installed = Path(str(resources.files("edgekit"))) / "_targets"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "targets"


def load_target_file(path: str | Path) -> Target:
    """Parse and validate one target file (options are checked against the backend).

    Raises:
        EdgekitError: unreadable TOML; an unknown key or option; a value of the
            wrong type or outside its allowed set or range (the name must match
            ``NAME_PATTERN``, not a path); an unknown backend or precision.
    """
    from edgekit.backends import get_backend

    p = Path(path)
    if not p.is_file():
        raise EdgekitError(f"target file not found: {p}")
    try:
        d = tomllib.loads(p.read_text())
    except (ValueError, RecursionError) as e:  # TOMLDecodeError, UnicodeDecodeError, int digits
        raise EdgekitError(f"{p} is not valid TOML: {e}") from None
    except OSError as e:
        raise EdgekitError(f"cannot read target file {p}: {e.strerror or e}") from None
    validate(d, target_schema(), str(p), hint="fix the target file (see docs/targets.md)")
    backend = get_backend(d["backend"], where=str(p))
    options = backend.resolve_options(d["precision"], d.get("options", {}), where=str(p))
    return Target(
        name=d["name"],
        backend=d["backend"],
        precision=d["precision"],
        description=d.get("description", ""),
        options=options,
        requires=d.get("requires", {}),
        notes=d.get("notes", ""),
        path=str(p),
    )


def target_dirs() -> list[Path]:
    dirs = [builtin_dir()]
    for entry in os.environ.get("EDGEKIT_TARGET_PATH", "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry))
    return dirs


def load_targets(extra_files: list[str | Path] | None = None) -> dict[str, Target]:
    """All targets by name: built-ins, then ``EDGEKIT_TARGET_PATH``, then ``extra_files``."""
    out: dict[str, Target] = {}
    for d in target_dirs():
        for f in sorted(Path(d).glob("*.toml")):
            t = load_target_file(f)
            out[t.name] = t
    for f in extra_files or []:
        t = load_target_file(f)
        out[t.name] = t
    return out


def get_target(name: str, extra_files: list[str | Path] | None = None) -> Target:
    """Look a target up by name.

    Raises:
        EdgekitError: no target of that name, listing the known ones.
    """
    targets = load_targets(extra_files)
    if name not in targets:
        raise EdgekitError(
            f"unknown target {name!r}",
            f"known targets: {', '.join(targets)}; or pass --target-file FILE",
        )
    return targets[name]


def variant(base: str, label: str, options: dict) -> Target:
    """Target ``base`` with ``options`` over its own, named ``BASE.LABEL`` (a valid target
    name, which the manifest checks): the configurations of a defaults sweep.

    Raises:
        EdgekitError: no target named ``base``.
    """
    t = get_target(base)
    return Target(
        name=f"{base}.{label}",
        backend=t.backend,
        precision=t.precision,
        options={**t.options, **options},
        requires=t.requires,
        path=t.path,
    )


def unavailable_reason(target: Target) -> str | None:
    """Why ``target`` cannot be built and run here, or None when it can."""
    from edgekit.backends import get_backend

    return get_backend(target.backend).unavailable_reason(target)
