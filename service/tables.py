"""Reading CSV tables as people export them: comma-separated, or semicolon-separated (spreadsheets in locales whose
decimal mark is a comma) or tab-separated. Pure Python: the command line reads tables with it too."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator


def csv_rows(text: str) -> Iterator[list[str]]:
    """The non-empty rows of a CSV text (a byte-order mark already removed). The separator is the comma, unless the
    first line has none and has semicolons or tabs."""
    first = text.split("\n", 1)[0]
    delimiter = "," if "," in first else next((d for d in ";\t" if d in first), ",")
    return (row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row)
