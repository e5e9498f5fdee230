"""One way to write a measured value into a Markdown table, for every report hotshard writes.

The demo's report, the strategy benchmark and the simulation put numbers side by side in
Markdown; a value that is missing must read the same ("-") in all three, and floats must not
carry a run's worth of noise digits into a table meant for people.
"""

from __future__ import annotations

from typing import Any


def format_cell(value: Any, spec: str = "g") -> str:
    """``value`` for a table cell: ``-`` when missing or empty, floats through ``spec``, yes or
    no for a flag, a list as its items joined by commas; text on one line, with no ``|`` that
    would split the cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec)
    if isinstance(value, list | tuple):
        return ", ".join(format_cell(v, spec) for v in value) or "-"
    return str(value).replace("|", "/").replace("\n", " ")
