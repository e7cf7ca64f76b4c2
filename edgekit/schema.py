"""One small typed schema for everything edgekit reads from a file.

Target files (TOML), artifact manifests (JSON), report files (JSON) and the
metadata of edgekit checkpoints are all checked against :class:`Field` specs
before any value is used: the type, the allowed values, a numeric range, a
regular expression, nested tables and lists, required keys, and unknown keys
(refused with the allowed list). A violation is one
:class:`edgekit.errors.EdgekitError` naming the file and the field path, e.g.::

    targets/x.toml: options.per_channel must be a boolean (true/false), got "no"

Why not pydantic or msgspec: the runtime install (numpy, onnxruntime, pillow,
typer, rich) must stay lean and start fast; typer is pinned below 0.29 precisely
to keep pydantic's start-up (+0.3-0.5 s) out. This module uses the standard
library only (``dataclasses``, ``json``, ``math``, ``re``). Measured with
``python -X importtime`` (2-core AMD EPYC, Python 3.11, 2026-11-28):
2.8-3.4 ms for ``edgekit.schema`` itself once typer/json/re are loaded (as in
every CLI command), 17-21 ms cumulative in a bare interpreter that imports
``re``/``json``/``dataclasses`` for it; ``edgekit --help`` does not import it
(0.107 s p50 wall, ``benchmarks/cli_startup.py --reps 10``).

Usage::

    SPEC = Dict({"name": Str(pattern=r"^[a-z]+$", required=True), "n": Int(min=1)})
    validate(data, SPEC, where="targets/x.toml")
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError

KINDS = ("any", "bool", "int", "number", "str", "list", "dict")


@dataclass(frozen=True)
class Field:
    """The spec of one value.

    Attributes:
        kind: ``any``, ``bool``, ``int`` (a bool is not an int), ``number`` (int or
            float, finite), ``str``, ``list`` or ``dict``.
        required: (as a member of a dict) the key must be present.
        nullable: ``None``/JSON ``null`` is accepted.
        choices: the allowed values (compared with ``==``, type-checked first).
        min, max: inclusive numeric bounds; ``exclusive_min`` makes ``min`` strict.
        pattern: a regular expression a string must match in full.
        forbidden: string values refused even when they match ``pattern``.
        items: the spec of every element of a list.
        length, min_items, max_items: list length constraints.
        fields: named members of a dict; unknown keys are refused unless ``extra``.
        keys, values: for dicts with free keys (``fields`` None): specs of every
            key (a ``str`` Field) and every value.
        one_of: alternative specs; the value must satisfy one (e.g. an int or "batch").
        doc: a description used in messages instead of the generated one.
    """

    kind: str = "any"
    required: bool = False
    nullable: bool = False
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    pattern: str | None = None
    forbidden: tuple = ()
    items: Field | None = None
    length: int | None = None
    min_items: int = 0
    max_items: int | None = None
    fields: Mapping[str, Field] | None = None
    extra: bool = False
    keys: Field | None = None
    values: Field | None = None
    one_of: tuple = ()
    doc: str = ""
    _regex: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}")
        if self.pattern is not None:
            object.__setattr__(self, "_regex", re.compile(self.pattern))


# --- constructors, so specs read like the data they describe ---------------------------


def Bool(**kw) -> Field:
    return Field("bool", **kw)


def Int(min: float | None = None, max: float | None = None, **kw) -> Field:
    return Field("int", min=min, max=max, **kw)


def Num(min: float | None = None, max: float | None = None, **kw) -> Field:
    return Field("number", min=min, max=max, **kw)


def Str(pattern: str | None = None, **kw) -> Field:
    return Field("str", pattern=pattern, **kw)


def Choice(*values, **kw) -> Field:
    """One of ``values`` (all of one type: str, int or bool)."""
    kind = {bool: "bool", int: "int", float: "number", str: "str"}[type(values[0])]
    return Field(kind, choices=tuple(values), **kw)


def ListOf(items: Field, **kw) -> Field:
    return Field("list", items=items, **kw)


def Dict(fields: Mapping[str, Field], extra: bool = False, **kw) -> Field:
    return Field("dict", fields=dict(fields), extra=extra, **kw)


def MapOf(values: Field, keys: Field | None = None, **kw) -> Field:
    return Field("dict", keys=keys, values=values, **kw)


def AnyOf(*alternatives: Field, **kw) -> Field:
    return Field("any", one_of=tuple(alternatives), **kw)


# --- checking -------------------------------------------------------------------------


def show(value: Any, limit: int = 60) -> str:
    """A short JSON-like rendering of a value for an error message (``"no"``, ``42``)."""
    try:
        s = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def describe(f: Field) -> str:
    """What ``f`` accepts, in words (``an integer >= 1``, ``one of "QDQ", "QOperator"``)."""
    if f.doc:
        text = f.doc
    elif f.one_of:
        text = " or ".join(describe(a) for a in f.one_of)
    elif f.choices:
        text = "one of " + ", ".join(show(c) for c in f.choices)
    else:
        text = {
            "any": "a value",
            "bool": "a boolean (true/false)",
            "int": "an integer",
            "number": "a finite number",
            "str": "a string",
            "list": "a list",
            "dict": "a table/object",
        }[f.kind]
        if f.kind in ("int", "number"):
            bounds = []
            if f.min is not None:
                bounds.append(f"{'>' if f.exclusive_min else '>='} {_num(f.min)}")
            if f.max is not None:
                bounds.append(f"<= {_num(f.max)}")
            if bounds:
                text += " " + " and ".join(bounds)
        if f.kind == "str" and f.pattern:
            text += f" matching {f.pattern}"
        if f.kind == "list":
            item = describe(f.items) if f.items is not None else ""
            if f.length is None and item and " or " not in item:
                text = "a list of " + _plural(item)
            else:
                text = f"a list of {f.length} items" if f.length is not None else "a list"
                text += f", each {item}" if item else ""
    if f.nullable:
        text += " or null"
    return text


def _plural(text: str) -> str:
    """``an integer >= 1`` -> ``integers >= 1``; ``an import name such as x`` -> ``import names ...``."""
    for art in ("an ", "a "):
        if text.startswith(art):
            words = text[len(art) :].split(" ")
            stop = {"such", "matching", ">=", ">", "<=", "(true/false)", "or", "and"}
            noun = next((i - 1 for i, w in enumerate(words) if w in stop), len(words) - 1)
            words[noun] += "s"
            return " ".join(words)
    return text


def _fail(where: str, path: str, message: str, hint: str | None = None):
    subject = path or "the top level"
    raise EdgekitError(f"{where}: {subject} {message}", hint)


def _type_ok(v: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "str":
        return isinstance(v, str)
    if kind == "list":
        return isinstance(v, list | tuple)
    return isinstance(v, dict)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def validate(value: Any, spec: Field, where: str, path: str = "", hint: str | None = None) -> Any:
    """Check ``value`` against ``spec``; return it unchanged.

    Args:
        where: the file (or other source) named first in the message.
        path: the field path of ``value`` inside it (``options.per_channel``,
            ``io.input_shape[2]``); empty for the whole document.
        hint: the fix to suggest (after " -- ").

    Raises:
        EdgekitError: ``"{where}: {path} must be {what}, got {value}"``, or an unknown
            key (with the allowed keys), or a missing required key.
    """
    if value is None:
        if spec.nullable or spec.kind == "any" and not spec.one_of:
            return value
        _fail(where, path, f"must be {describe(spec)}, got null", hint)
    if spec.one_of:
        for alt in spec.one_of:
            try:
                validate(value, alt, where, path, hint)
                return value
            except EdgekitError:
                continue
        _fail(where, path, f"must be {describe(spec)}, got {show(value)}", hint)
    if not _type_ok(value, spec.kind):
        _fail(where, path, f"must be {describe(spec)}, got {show(value)}", hint)
    if spec.choices and value not in spec.choices:
        _fail(where, path, f"must be {describe(spec)}, got {show(value)}", hint)
    if spec.kind in ("int", "number"):
        lo_bad = spec.min is not None and (
            value <= spec.min if spec.exclusive_min else value < spec.min
        )
        if lo_bad or (spec.max is not None and value > spec.max):
            _fail(where, path, f"must be {describe(spec)}, got {show(value)}", hint)
    elif spec.kind == "str":
        if spec.forbidden and value in spec.forbidden:
            _fail(where, path, f"must not be {show(value)}", hint)
        if spec._regex is not None and not spec._regex.fullmatch(value):
            _fail(where, path, f"must be {describe(spec)}, got {show(value)}", hint)
    elif spec.kind == "list":
        n = len(value)
        if spec.length is not None and n != spec.length:
            _fail(where, path, f"must be {describe(spec)}, got {n} item(s): {show(value)}", hint)
        if n < spec.min_items or (spec.max_items is not None and n > spec.max_items):
            most = f" and at most {spec.max_items}" if spec.max_items is not None else ""
            _fail(where, path, f"must hold at least {spec.min_items}{most} item(s), got {n}", hint)
        if spec.items is not None:
            for i, item in enumerate(value):
                validate(item, spec.items, where, f"{path}[{i}]", hint)
    elif spec.kind == "dict":
        _validate_dict(value, spec, where, path, hint)
    return value


def _validate_dict(value: dict, spec: Field, where: str, path: str, hint: str | None) -> None:
    if spec.fields is not None:
        unknown = [k for k in value if k not in spec.fields]
        if unknown and not spec.extra:
            _fail(
                where,
                path,
                f"has unknown key(s) {', '.join(show(k) for k in unknown)}",
                f"allowed: {', '.join(spec.fields) or 'none'}",
            )
        for key, f in spec.fields.items():
            if key not in value:
                if f.required:
                    _fail(where, _join(path, key), f"is required ({describe(f)})", hint)
                continue
            validate(value[key], f, where, _join(path, key), hint)
    if spec.min_items and len(value) < spec.min_items:
        _fail(where, path, f"must hold at least {spec.min_items} entr(y/ies), got none", hint)
    if spec.keys is not None or spec.values is not None:
        for key, v in value.items():
            if spec.keys is not None:
                validate(key, spec.keys, where, _join(path, f"<key {show(key)}>"), hint)
            if spec.values is not None:
                validate(v, spec.values, where, _join(path, str(key)), hint)
