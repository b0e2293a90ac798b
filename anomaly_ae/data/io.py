"""Reading and writing tables (CSV, gzipped CSV, Parquet) with errors an end user can act on.

Large inputs are streamed in chunks whose row index continues across chunks, so a schema error
in the third chunk still names the row number the user sees in the file. Outputs are written to
a temporary file and moved into place only when complete, so a crash never leaves a half-written
result where a previous good one used to be.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, TextIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly_ae.exceptions import DataError, SchemaError

Format = Literal["csv", "parquet"]

_SUFFIXES: dict[str, Format] = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_SUFFIXES)

# What pandas and pyarrow raise for content that is not the format its name promises.
_CONTENT_ERRORS: dict[Format, tuple[type[Exception], ...]] = {
    "csv": (pd.errors.ParserError, UnicodeDecodeError, gzip.BadGzipFile, zlib.error, EOFError),
    "parquet": (pa.ArrowException,),
}
_CONTENT_HINTS: dict[Format, str] = {
    "csv": "check that it is UTF-8, comma-separated text with the same number of fields on every line",
    "parquet": "the file may be truncated or not Parquet at all; re-export it",
}
_DISPLAY_NAMES: dict[Format, str] = {"csv": "CSV", "parquet": "Parquet"}


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a whole CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``) file.

    ``columns`` selects and orders columns; a missing one raises :class:`SchemaError`.
    Raises :class:`DataError` for a missing, unsupported, empty or unparsable file.
    """
    path, fmt = _check_input(path)
    if fmt == "csv":
        _check_columns(path, _csv_header(path), columns)
        with _translated_errors(path, fmt):
            frame = pd.read_csv(path, usecols=columns)
    else:
        with _translated_errors(path, fmt):
            parquet = pq.ParquetFile(path)
            _check_columns(path, parquet.schema_arrow.names, columns)
            frame = parquet.read(columns=columns).to_pandas()
    if len(frame) == 0:
        raise _no_rows(path)
    return frame if columns is None else frame[columns]


def iter_table_chunks(path: str | Path, chunk_rows: int = 50_000, *,
                      columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """Stream a CSV or Parquet file in chunks of ``chunk_rows`` rows (the last may be shorter).

    Memory stays bounded by the chunk size. Each chunk's index continues the previous one
    (the second chunk starts at ``chunk_rows``), so row numbers in errors are file-global.
    Raises the same errors as :func:`read_table`; problems with the file as a whole (missing,
    empty, bad header) are raised by this call, not later by the loop over its result.
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    path, fmt = _check_input(path)
    chunks = _csv_chunks(path, chunk_rows, columns) if fmt == "csv" else _parquet_chunks(path, chunk_rows, columns)
    # Reading the first chunk now makes a useless file fail before the caller opens any output.
    first = next(chunks, None)
    # pandas yields one empty chunk for a CSV with a header and no rows.
    if first is None or len(first) == 0:
        raise _no_rows(path)
    return _globally_indexed(itertools.chain([first], chunks), columns)


def _globally_indexed(chunks: Iterator[pd.DataFrame], columns: list[str] | None) -> Iterator[pd.DataFrame]:
    start = 0
    for chunk in chunks:
        chunk.index = pd.RangeIndex(start, start + len(chunk))
        start += len(chunk)
        yield chunk if columns is None else chunk[columns]


def _csv_chunks(path: Path, chunk_rows: int, columns: list[str] | None) -> Iterator[pd.DataFrame]:
    _check_columns(path, _csv_header(path), columns)
    # A bad line surfaces only when the chunk holding it is parsed, so the loop is inside the guard.
    with _translated_errors(path, "csv"), pd.read_csv(path, usecols=columns, chunksize=chunk_rows) as reader:
        yield from reader


def _parquet_chunks(path: Path, chunk_rows: int, columns: list[str] | None) -> Iterator[pd.DataFrame]:
    with _translated_errors(path, "parquet"):
        parquet = pq.ParquetFile(path)
        _check_columns(path, parquet.schema_arrow.names, columns)
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas()


class AtomicTableWriter:
    """Stream DataFrame chunks into a CSV or Parquet file that appears only when complete.

    ``with AtomicTableWriter(path) as writer: writer.write(chunk)`` writes into a hidden temporary
    file beside ``path`` and renames it onto ``path`` when the block exits normally. If the block
    raises, the temporary file is deleted and an existing ``path`` is left as it was. Every chunk
    must have the columns of the first; Parquet also keeps the first chunk's column types. If no
    chunk is written, ``path`` becomes an empty table. ``rows_written`` counts the rows so far.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._format = _format_of(self.path)
        self._tmp: Path | None = None
        self._raw: BinaryIO | None = None
        self._text: TextIO | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._columns: list[str] | None = None
        self.rows_written = 0

    def __enter__(self) -> "AtomicTableWriter":
        if self._tmp is not None:
            raise RuntimeError("an AtomicTableWriter can be used for one 'with' block only")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory so os.replace is a rename within one file system, hence atomic.
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self._raw = open(self._tmp, "xb")
        if self._format == "csv":
            gzipped = self.path.name.lower().endswith(".gz")
            binary = gzip.GzipFile(fileobj=self._raw, mode="wb") if gzipped else self._raw
            self._text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        return self

    def write(self, frame: pd.DataFrame) -> None:
        """Append the rows of ``frame`` (its index is not written)."""
        if self._raw is None:
            raise RuntimeError("AtomicTableWriter.write() must be called inside its 'with' block")
        columns = [str(c) for c in frame.columns]
        first = self._columns is None
        if first:
            self._columns = columns
        elif columns != self._columns:
            raise SchemaError(f"cannot write to '{self.path}': this chunk has columns {columns} but the "
                              f"first chunk had {self._columns}; give every chunk the same columns in "
                              "the same order", reason="columns")
        if self._text is not None:
            frame.to_csv(self._text, header=first, index=False)
        else:
            self._write_parquet(frame)
        self.rows_written += len(frame)

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        if self._parquet is None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            self._schema = table.schema
            self._parquet = pq.ParquetWriter(self._raw, table.schema)
        else:
            try:
                table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
            except (pa.ArrowException, ValueError, TypeError) as exc:
                raise SchemaError(f"cannot write to '{self.path}': this chunk's column types do not match "
                                  f"the first chunk's ({exc}); cast the columns to the same types",
                                  reason="dtype") from exc
        self._parquet.write_table(table)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._tmp is not None
        committed = False
        try:
            self._close(commit=exc_type is None)
            if exc_type is None:
                os.replace(self._tmp, self.path)
                committed = True
        finally:
            if not committed:
                self._tmp.unlink(missing_ok=True)

    def _close(self, commit: bool) -> None:
        assert self._raw is not None
        try:
            if commit and self._format == "parquet" and self._parquet is None:
                pq.write_table(pa.table({}), self._raw)
            if self._parquet is not None:
                self._parquet.close()
            if self._text is not None:
                binary = self._text.detach()  # flushes, but leaves the file open for fsync
                if binary is not self._raw:
                    binary.close()  # the gzip layer: writes its trailer, leaves the file open
            if commit:
                self._raw.flush()
                # The rename must not become visible before the data is on disk.
                os.fsync(self._raw.fileno())
        except Exception:
            # When aborting, the caller's exception is the one worth seeing, not a follow-up.
            if commit:
                raise
        finally:
            self._raw.close()
            self._raw = None


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` (without its index) to a CSV or Parquet file atomically."""
    with AtomicTableWriter(path) as writer:
        writer.write(frame)


def _format_of(path: Path) -> Format:
    name = path.name.lower()
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise DataError(f"unsupported file type for '{path}'; supported extensions are "
                    f"{', '.join(SUPPORTED_SUFFIXES)}. Convert the file to CSV or Parquet, or rename it "
                    "if it already is one")


def _check_input(path: str | Path) -> tuple[Path, Format]:
    path = Path(path)
    fmt = _format_of(path)
    if not path.exists():
        raise DataError(f"input file '{path}' does not exist; check the path")
    if not path.is_file():
        raise DataError(f"input path '{path}' is not a file; give the path of a {_DISPLAY_NAMES[fmt]} file")
    if path.stat().st_size == 0:
        raise _no_rows(path)
    return path, fmt


def _csv_header(path: Path) -> list[str]:
    with _translated_errors(path, "csv"):
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]


def _check_columns(path: Path, available: list[str], wanted: list[str] | None) -> None:
    missing = [c for c in wanted or [] if c not in available]
    if missing:
        raise SchemaError(f"input file '{path}' has no column(s) {missing}; its columns are {available}. "
                          "Fix the column names in the file or in the request",
                          column=missing[0], reason="missing_column")


def _no_rows(path: Path) -> DataError:
    return DataError(f"input file '{path}' has no rows; provide a file with a header and at least one data row")


@contextmanager
def _translated_errors(path: Path, fmt: Format) -> Iterator[None]:
    """Turn reader exceptions into a DataError that names the file and says what to check."""
    try:
        yield
    except pd.errors.EmptyDataError as exc:
        raise _no_rows(path) from exc
    except _CONTENT_ERRORS[fmt] as exc:
        raise DataError(f"could not parse '{path}' as {_DISPLAY_NAMES[fmt]} ({str(exc).strip()}); "
                        f"{_CONTENT_HINTS[fmt]}") from exc
    except OSError as exc:
        raise DataError(f"could not read '{path}' ({exc}); check that the file is readable") from exc
