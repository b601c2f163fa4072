"""Result tables as CSV and Markdown, formatted one way for the comparison and the study report."""

from __future__ import annotations

import csv
import io
from typing import Any

from .config import format_dose


def cell(value: Any, column: str = "", digits: int = 4) -> str:
    """Doses as 1e3-style tags, floats to ``digits`` significant figures, None as blank."""
    if column == "dose" and isinstance(value, int | float):
        return format_dose(float(value))
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "" if value is None else str(value)


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def markdown_lines(rows: list[dict[str, Any]], columns: list[str], digits: int = 4) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(r.get(c), c, digits) for c in columns) + " |" for r in rows]
