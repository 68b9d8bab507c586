"""Rows of local JSON Lines / JSON / parquet files, each with where it came from ("corpus.jsonl line 7").

Read here rather than through `datasets`, so that a malformed file, a bad line or a row whose text field is
missing or holds a number stops with one line naming the file, the line (or row) and data.text_field,
instead of an Arrow error that names neither.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

MAX_SHOWN = 60  # characters of an offending value quoted in an error


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def is_array(path: str) -> bool:
    """A .json file holding one array (a .jsonl never is: its lines are the rows, even a line holding a list)."""
    if path.endswith(".jsonl"):
        return False
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4096), b""):
            stripped = chunk.lstrip()
            if stripped:
                return stripped.startswith(b"[")
    return False


def json_rows(path: str) -> Iterator[tuple[str, object]]:
    """(where, row) per line of a JSON Lines file (blank lines skipped), or per item of a .json file holding one
    array."""
    if is_array(path):
        try:
            with open(path, "rb") as f:
                items = json.load(f)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            raise ValueError(
                f"data.source: {path} is not valid JSON ({e}); fix the file or remove it from data.source"
            ) from None
        for number, row in enumerate(items, 1):
            yield f"{path} item {number}", row
        return
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(
                    f"data.source: {path} line {number} is not valid JSON ({e}); "
                    f"fix or remove that line (each line must be one JSON object)"
                ) from None
            yield f"{path} line {number}", row


def _open_parquet(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001  (pyarrow raises ArrowInvalid, OSError, ...: all mean "not readable")
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"data.source: {path} is not a readable parquet file ({reason}); fix the file or remove it from data.source"
        ) from None


def check_parquet(path: str, field: str):
    """The opened file, once it is known to be parquet with a `field` column."""
    pf = _open_parquet(path)
    names = pf.schema_arrow.names
    if field not in names:
        raise ValueError(
            f"data.text_field={field!r} is not a column of {path} (columns: {', '.join(names)}); "
            f"set data.text_field to the column holding the text"
        )
    return pf


def parquet_rows(path: str, field: str) -> Iterator[tuple[str, object]]:
    """(where, {field: value}) per row of a parquet file, reading only that column."""
    number = 0
    for batch in check_parquet(path, field).iter_batches(columns=[field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            number += 1
            yield f"{path} row {number}", {field: value}


def row_text(row: object, field: str, where: str) -> str | None:
    """The text of one row (None when the field is null), or a one-line error naming `where` and data.text_field."""
    if not isinstance(row, dict):
        raise ValueError(
            f"data.source: {where} holds {_short(row)} (type {type(row).__name__}), not an object with a "
            f'{field!r} key; each row must be an object such as {{{json.dumps(field)}: "..."}}'
        )
    if field not in row:
        raise ValueError(
            f"data.text_field={field!r} is not a key of {where} (keys: {', '.join(map(str, row)) or 'none'}); "
            f"set data.text_field to the key holding the text"
        )
    text = row[field]
    if text is not None and not isinstance(text, str):
        raise ValueError(
            f"data.text_field={field!r} of {where} holds {_short(text)} (type {type(text).__name__}), not text; "
            f"fix that row, or set data.text_field to a key that holds text"
        )
    return text
