"""The one CSV reader for user tables: image manifests, audit manifests and feature tables.

Every problem is one :class:`DataError` line naming the file (and the line when there is one):

- the path is not a regular file (a folder, a pipe such as ``<(cat m.csv)``, a device): said as such;
- encoding: UTF-8 (with or without a byte-order mark) and UTF-16 with a byte-order mark are read; UTF-16 without
  one, other encodings (Latin-1, ...) and NUL bytes are refused, saying so;
- delimiter: columns must be separated by commas; a header that is one column holding ``;``, tabs or ``|`` is
  refused, naming the separator it uses (spreadsheets in many locales write ``;`` and decimal commas);
- quoting errors are reported with their line.

Rows that are entirely blank are dropped; each row keeps the row number a spreadsheet shows (the header is row 1;
blank rows count, a quoted cell spanning several lines does not).
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from pathlib import Path

from shiftkit.data.paths import path_problem
from shiftkit.errors import DataError

OTHER_DELIMITERS = {";": "semicolons (';')", "\t": "tabs", "|": "vertical bars ('|')"}


@dataclass(frozen=True)
class CsvTable:
    """A CSV read as strings: stripped ``header``, ``rows`` (lists of cells, as written) and the row ``numbers``
    of the rows (for error messages)."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    numbers: list[int]

    def dicts(self, strip_values: bool = False) -> list[dict[str, str]]:
        """Rows as ``{column: cell}``; a short row's missing cells are ``""``, a long row's extra cells dropped."""
        out = []
        for row in self.rows:
            cells = [c.strip() for c in row] if strip_values else row
            cells = cells + [""] * (len(self.header) - len(cells))
            out.append(dict(zip(self.header, cells)))
        return out


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode_text(data: bytes, path: Path, what: str) -> str:
    """UTF-8 (optional BOM) or UTF-16 with a BOM; anything else is a one-line refusal saying what is wrong."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise DataError(f"{path}: {what} starts like UTF-16 text but is not valid UTF-16; save it as UTF-8 "
                            "CSV") from None
    head = data[:200]
    if head and head.count(b"\x00") >= len(head) // 4:
        raise DataError(f"{path}: {what} looks like UTF-16 text without a byte-order mark; save it as UTF-8 CSV")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path} line {_line_of(data, nul)}: {what} contains a NUL byte (not a text file?)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        byte = data[exc.start]
        raise DataError(f"{path} line {_line_of(data, exc.start)}: {what} is not UTF-8 text (byte 0x{byte:02x}); "
                        "save it as UTF-8 CSV") from None


def require_file(path: Path, what: str, allow_folder: bool = False) -> None:
    """Refuse a ``path`` that is not a regular file (missing, a pipe, a device, a symlink loop, ...) in one line
    saying what it is; a pipe is told to be saved as a file (tables are read more than once)."""
    problem = path_problem(path, missing=f"{what} not found")
    if problem is None or (allow_folder and problem.startswith("is a folder")):
        return
    if not problem.startswith("is "):  # not found, name too long, permission denied, ...
        raise DataError(f"{path}: {problem}")
    hint = f"; save the {what} to a .csv file and pass that" if "pipe" in problem else ""
    raise DataError(f"{path}: the {what} {problem}{hint}")


def read_csv(path: str | Path, what: str = "table", *, strict: bool = False) -> CsvTable:
    """Read ``path`` as a comma-separated table (see the module docstring). ``what`` names it in messages
    (``manifest``, ``features table``); ``strict`` refuses rows whose number of cells differs from the header's."""
    path = Path(path)
    require_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None
    text = decode_text(data, path, what)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] = []
    rows: list[list[str]] = []
    numbers: list[int] = []
    try:  # row numbers as a spreadsheet shows them: blank rows count, a quoted cell spanning lines does not
        for number, row in enumerate(reader, start=1):
            if not header:
                if any(cell.strip() for cell in row):
                    header = [cell.strip() for cell in row]
                continue
            if any(cell.strip() for cell in row):
                rows.append(row)
                numbers.append(number)
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: not a valid CSV file ({exc})") from None
    if len(header) == 1:
        used = [name for sep, name in OTHER_DELIMITERS.items() if sep in header[0]]
        if used:
            raise DataError(f"{path}: the {what}'s columns are separated by {used[0]}, not commas; save it as a "
                            "comma-separated CSV (with '.' as the decimal point)")
    duplicate = next((c for c in header if c and header.count(c) > 1), None)
    if duplicate is not None:
        raise DataError(f"{path}: column '{duplicate}' appears twice in the {what}'s header")
    if strict:
        for number, row in zip(numbers, rows):
            if len(row) != len(header):
                raise DataError(f"{path} row {number}: {len(row)} cells for {len(header)} columns")
    return CsvTable(path, header, rows, numbers)
