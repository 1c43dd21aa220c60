"""The README's "Configuration reference" is checked against the schema (relay/config/): every
key of every section has a row, its default is the model's, and its meaning is there.

Checked rather than generated: the reference says more than a schema can (why a default,
what Postfix does), so the README stays hand-written and this test holds it to the code.
A row's default is read as TOML and validated by the field's own model, so `"24h"` matches
86400.0 and `"100M"` matches 104857600. Where the schema carries a `Field(description=...)`,
the row's meaning must contain it; a key without one must have a meaning of its own.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from relay.config import Config
from relay.config.types import Strict

README = Path(__file__).resolve().parent.parent / "README.md"
# Defaults written in words: what each stands for.
NONE_WORDS = {"none", "unset", "system resolver"}
# Keys whose default the reference gives below the table.
DEFAULT_BELOW = {"scoring.weights"}
# Values for a model's required keys, so one key at a time can be validated.
REQUIRED = {"next_hop": "127.0.0.1:25", "cert": "cert.pem", "key": "key.pem",
            "tag_score": 5.0, "reject_score": 10.0, "scope": "read"}
# A comma between two defaults, not one inside a `[25, 465]`.
_OUTSIDE_BACKTICKS = r",\s*(?=(?:[^`]*`[^`]*`)*[^`]*$)"


@dataclass
class Row:
    default: str  # the default cell's text for this key
    meaning: str


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the section model a field holds, whether it is a dict of them: `[domains."x"]`)."""
    if get_origin(annotation) in (Union, UnionType):
        models = [a for a in get_args(annotation) if a is not NoneType]
        return _model_in(models[0]) if len(models) == 1 else (None, False)
    if get_origin(annotation) is dict:
        model, _ = _model_in(get_args(annotation)[1])
        return model, model is not None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def keys(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[type[BaseModel], str,
                                                                      FieldInfo]]:
    """Every key of a section, `cache.ttl` for a nested table: (its model, name, field)."""
    out: dict[str, tuple[type[BaseModel], str, FieldInfo]] = {}
    for name, field in model.model_fields.items():
        inner, is_dict = _model_in(field.annotation)
        if inner is not None and not is_dict:
            out.update(keys(inner, f"{prefix}{name}."))
        else:
            out[prefix + name] = (model, name, field)
    return out


def sections() -> dict[str, tuple[type[BaseModel], bool]]:
    out = {}
    for name, field in Config.model_fields.items():
        model, is_dict = _model_in(field.annotation)
        assert model is not None, name
        out[name] = (model, is_dict)
    return out


def reference() -> dict[str, dict[str, Row]]:
    """README rows by section and key."""
    text = README.read_text()
    start = text.index("\n## Configuration reference")
    part = text[start:text.index("\n## ", start + 1)]
    tables: dict[str, dict[str, Row]] = {}
    section = ""
    for line in part.splitlines():
        if line.startswith("### "):
            heading = re.search(r"`\[([^\]]+)\]`", line)
            assert heading, line
            section = re.sub(r'\."[^"]*"', "", heading.group(1))
            assert section not in tables, f"[{section}] has two headings"
            tables[section] = {}
        elif section and line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            assert len(cells) == 3, line
            names = re.findall(r"`([^`]+)`", cells[0])
            values = [v.strip().removeprefix("`").removesuffix("`") for v in
                      (re.split(_OUTSIDE_BACKTICKS, cells[1]) if len(names) > 1
                       else [cells[1]])]
            assert len(values) == len(names), f"one default per key: {line}"
            for name, value in zip(names, values, strict=True):
                key = re.sub(r'\."[^"]*"', "", name)
                assert key not in tables[section], f"{section}.{key} twice"
                tables[section][key] = Row(value, cells[2])
    return tables


def _check_default(model: type[BaseModel], name: str, field: FieldInfo, row: Row,
                   where: str) -> None:
    cell = row.default.strip()
    if field.is_required():
        assert cell == "required", f"{where}: required, README says {cell!r}"
        return
    default = field.get_default(call_default_factory=True)
    if where in DEFAULT_BELOW:
        assert cell == "see below", where
        return
    if cell.lower() in NONE_WORDS:
        assert default is None, f"{where}: README says {cell!r}, the default is {default!r}"
        return
    try:
        value = tomllib.loads(f"v = {cell}")["v"]
    except tomllib.TOMLDecodeError:
        pytest.fail(f"{where}: the default {cell!r} is not a TOML value")
    filled = {k: v for k, v in REQUIRED.items() if k in model.model_fields and k != name}
    try:
        parsed = getattr(model.model_validate({**filled, name: value}), name)
    except ValidationError as e:
        pytest.fail(f"{where}: the README's default {cell!r} is not valid: {e}")
    if isinstance(default, BaseModel | dict | list | tuple):
        parsed, default = repr(parsed), repr(default)
    assert parsed == default, f"{where}: README {cell!r}, the schema {default!r}"


def test_every_section_is_strict() -> None:
    for name, (model, _) in sections().items():
        for m in [model, *(k[0] for k in keys(model).values())]:
            assert issubclass(m, Strict), f"[{name}]: {m.__name__} is not a Strict section"


def test_every_key_is_in_the_reference() -> None:
    tables = reference()
    problems: list[str] = []
    assert set(tables) == set(sections()), "one ### heading per section"
    for section, (model, _) in sections().items():
        rows = tables[section]
        expected = keys(model)
        for key, (owner, name, field) in expected.items():
            where = f"{section}.{key}"
            row = rows.get(key)
            if row is None:
                problems.append(f"{where}: no row in the README's reference")
                continue
            try:
                _check_default(owner, name, field, row, where)
            except (AssertionError, pytest.fail.Exception) as e:
                problems.append(str(e).splitlines()[0])
            if field.description and field.description not in row.meaning:
                problems.append(f"{where}: the meaning lacks the schema's description "
                                f"{field.description!r}")
            if not field.description and not row.meaning:
                problems.append(f"{where}: no meaning (write one, or a Field description)")
            inner, is_dict = _model_in(field.annotation)
            if is_dict and inner is not None:  # `[domains."x"]`-like tables in one row
                for sub in inner.model_fields:
                    if f"`{sub}`" not in row.meaning and f"{sub} =" not in row.meaning:
                        problems.append(f"{where}: the meaning does not name `{sub}`")
        nested = {k.split(".")[0] for k in expected if "." in k}
        for key in rows:
            if key not in expected and key not in nested:
                problems.append(f"{section}.{key}: in the README, not in the schema")
    assert problems == [], "\n".join(problems)
