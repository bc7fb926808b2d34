"""A small TOML writer for the effective configuration (`edge-node check-config`).

Handles what the settings contain: nested tables, arrays of tables, strings, numbers, booleans and
lists of scalars. None values are written as comments, since TOML has no null.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _table_lines(table: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, value in table.items():
        if value is None:
            lines.append(f"# {key} = (not set)")
        elif not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{key} = {_scalar(value)}")
    return lines


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def dumps(data: Mapping[str, Any], _prefix: str = "") -> str:
    """Render `data` (plain JSON-like values) as TOML text."""
    out: list[str] = _table_lines(data) if _prefix == "" else []
    for key, value in data.items():
        name = f"{_prefix}{key}"
        if isinstance(value, Mapping):
            out += ["", f"[{name}]", *_table_lines(value)]
            nested = {k: v for k, v in value.items() if isinstance(v, Mapping) or _is_table_array(v)}
            if nested:
                out.append(dumps(nested, name + "."))
        elif _is_table_array(value):
            for item in value:
                out += ["", f"[[{name}]]", *_table_lines(item)]
    return "\n".join(out).strip("\n") + "\n"
