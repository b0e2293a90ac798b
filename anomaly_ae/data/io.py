"""Reading and writing tables (CSV, gzipped CSV, Parquet) with errors an end user can act on.

Large inputs are streamed in chunks whose row index continues across chunks, so a schema error
in the third chunk still names the row number the user sees in the file. Outputs are written to
a temporary file and moved into place only when complete, so a crash never leaves a half-written
result where a previous good one used to be; the temporary file's name carries the writer's pid,
so the next writer of the same output removes what a killed one left behind.

Every read of a user's file is bounded: no CSV line may be longer than `max_line_bytes` (a file
without newlines would otherwise be buffered whole by the parser), and a whole-file read
(`read_table`, `read_array`) is refused up front when the data cannot fit in the memory available.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import re
import socket
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TextIO

import numpy as np
import pandas as pd

from anomaly_ae.exceptions import DataError, SchemaError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

Format = Literal["csv", "parquet"]

_SUFFIXES: dict[str, Format] = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_SUFFIXES)


def _content_errors(fmt: Format) -> tuple[type[Exception], ...]:
    """What pandas and pyarrow raise for content that is not the format its name promises."""
    if fmt == "parquet":
        return (_arrow()[0].ArrowException,)
    return (pd.errors.ParserError, UnicodeDecodeError, gzip.BadGzipFile, zlib.error, EOFError)


def _arrow() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), imported on the first Parquet file: a process that reads no Parquet
    (a service worker saving nothing but JSON + safetensors) does not map pyarrow's ~35-60 MiB."""
    import pyarrow
    import pyarrow.parquet

    return pyarrow, pyarrow.parquet


_CONTENT_HINTS: dict[Format, str] = {
    "csv": "check that it is UTF-8, comma-separated text with the same number of fields on every line",
    "parquet": "the file may be truncated or not Parquet at all; re-export it",
}
_DISPLAY_NAMES: dict[Format, str] = {"csv": "CSV", "parquet": "Parquet"}

# The longest CSV line any reader accepts unless the caller says otherwise (CLI: --max-line-bytes).
DEFAULT_MAX_LINE_BYTES = 1 << 20


def available_memory() -> int | None:
    """Bytes this process can still allocate: the smaller of the system's MemAvailable and the
    cgroup (container) limit minus usage; None when neither can be read."""
    candidates = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = int(Path(limit_file).read_text().strip())
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):  # "max" (no limit) or no such cgroup
            continue
        if limit < 1 << 60:  # cgroup v1 reports "no limit" as a huge number
            candidates.append(max(0, limit - usage))
        break
    return min(candidates) if candidates else None


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits_in_memory(path: Path, needed: int, what: str = "reading it") -> None:
    """Refuse a whole-file read that needs more memory than is available, before allocating it."""
    available = available_memory()
    if available is not None and needed > available:
        raise DataError(f"'{path}' is too big for this machine: {what} needs at least {_size(needed)} of memory but "
                        f"only {_size(available)} is available; use a sample of the data (or, for scoring, "
                        "`anomaly-ae score`, which reads in chunks) or a machine with more memory")


class _LineBoundedReader(io.RawIOBase):
    """A binary stream over a (possibly gzipped) file that fails as soon as a line is too long.

    pandas' CSV parser buffers a whole line before it can split it, so a file without newlines
    would be read into memory whole; this stops it at `limit` bytes with a DataError instead.
    """

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__()
        self.path, self.limit = path, limit
        self._file = open(path, "rb")
        self._source: BinaryIO = gzip.GzipFile(fileobj=self._file, mode="rb") \
            if path.name.lower().endswith(".gz") else self._file
        self._run = 0  # bytes of the current line read so far
        self._lines = 0  # complete lines read so far

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._check(data)
        return n

    def _check(self, data: bytes) -> None:
        start, last = 0, data.rfind(b"\n")
        while start <= last:
            end = data.find(b"\n", start)
            self._fail_if(self._run + end - start)
            self._lines, self._run, start = self._lines + 1, 0, end + 1
            if last - start <= self.limit:  # no line in data[start:last] can be too long
                self._lines += data.count(b"\n", start, last + 1)
                start = last + 1
        self._run += len(data) - start
        self._fail_if(self._run)

    def _fail_if(self, length: int) -> None:
        if length <= self.limit:
            return
        line = "the first line" if self._lines == 0 else f"line {self._lines + 1}"
        hint = "not a CSV with a header row?" if self._lines == 0 else "not a CSV with one record per line?"
        raise DataError(f"{line} of '{self.path}' is longer than {_size(self.limit)}: {hint} Check that the file "
                        "is comma-separated text; if its lines really are that long, raise the limit with "
                        "--max-line-bytes BYTES")

    def close(self) -> None:
        try:
            if self._source is not self._file:
                self._source.close()
        finally:
            self._file.close()
            super().close()


def _open_csv(path: Path, max_line_bytes: int) -> io.BufferedReader:
    if isinstance(max_line_bytes, bool) or not isinstance(max_line_bytes, int) or max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be a positive number of bytes, got {max_line_bytes!r}")
    return io.BufferedReader(_LineBoundedReader(path, max_line_bytes), buffer_size=1 << 16)


# The texts pandas reads as missing by default, but for `NA_TEXT` ("NA", "None"), which a text column can
# hold as values (North America or Namibia, a plan): the schema reads those as missing in a column of
# numbers (R writes NA there) and keeps them as values in a column of text.
MISSING_MARKERS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                   "N/A", "NULL", "NaN", "n/a", "nan", "null"]


def _read_csv(handle: BinaryIO, columns: list[str] | None, text_columns: Sequence[str] = (), **options: Any) -> Any:
    return pd.read_csv(handle, usecols=columns, keep_default_na=False, na_values=MISSING_MARKERS,
                       dtype={c: str for c in text_columns} or None, **options)


# Codes such as "007" or "01234" (ZIP codes, account numbers) look like integers, and pandas would read
# them as numbers without their leading zeros: an id copied to the output would no longer match its
# input, and a category would become a quantity.
_LEADING_ZERO = r"[+-]?0\d"


def _whole_numbers(values: np.ndarray) -> bool:
    """All finite and whole (np.mod of an infinity warns "invalid value", and infinity is no code)."""
    return bool(np.isfinite(values).all()) and bool(np.all(np.mod(values, 1) == 0))


def _keep_codes_as_text(path: Path, frame: pd.DataFrame, max_line_bytes: int) -> pd.DataFrame:
    """The columns of `frame` read as whole numbers whose text in the CSV has a leading zero, read again as
    text; the other columns as they are."""
    whole = [c for c in frame.columns if frame[c].dtype.kind in "iu" or (
        frame[c].dtype.kind == "f" and _whole_numbers(frame[c].dropna().to_numpy()))]
    if not whole:
        return frame
    with _translated_errors(path, "csv"), _open_csv(path, max_line_bytes) as handle:
        text = _read_csv(handle, whole, whole)
    codes = [c for c in whole if text[c].str.match(_LEADING_ZERO).any()]
    return frame.assign(**{c: text[c] for c in codes}) if codes else frame


def code_columns(frame: pd.DataFrame) -> dict[str, str]:
    """The text columns of `frame` that hold whole numbers only, some written with a leading zero (as
    `read_table` keeps "01234"), each with such a value: codes, which a model learns as categories."""
    found = {}
    for name in frame.columns:
        if frame[name].dtype.kind in "OT" or pd.api.types.is_string_dtype(frame[name]):
            text = frame[name].dropna().astype(str)
            zeros = text[text.str.match(_LEADING_ZERO)]
            if len(zeros) and text.str.fullmatch(r"[+-]?\d+").all():
                found[str(name)] = zeros.iloc[0]
    return found


def read_table(path: str | Path, columns: list[str] | None = None, *, text_columns: Sequence[str] = (),
               max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> pd.DataFrame:
    """Read a whole CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``) file.

    ``columns`` selects and orders columns; a missing one raises :class:`SchemaError`.
    ``text_columns`` (CSV) are read verbatim as text, where present; a CSV column of whole numbers
    written with leading zeros ("01234") is read as text too.
    Raises :class:`DataError` for a missing, unsupported, empty or unparsable file.
    """
    path, fmt = _check_input(path)
    if fmt == "csv":
        header = _csv_header(path, max_line_bytes)
        _check_columns(path, header, columns)
        check_fits_in_memory(path, _csv_data_size(path))
        with _translated_errors(path, fmt), _open_csv(path, max_line_bytes) as handle:
            frame = _read_csv(handle, columns, [c for c in text_columns if c in header])
        frame = _keep_codes_as_text(path, frame, max_line_bytes)
    else:
        with _translated_errors(path, fmt):
            parquet = _arrow()[1].ParquetFile(path)
            _check_columns(path, parquet.schema_arrow.names, columns)
            metadata = parquet.metadata
            check_fits_in_memory(path, sum(metadata.row_group(i).total_byte_size
                                           for i in range(metadata.num_row_groups)))
            frame = parquet.read(columns=columns).to_pandas()
    if len(frame) == 0:
        raise _no_rows(path)
    return frame if columns is None else frame[columns]


def iter_table_chunks(path: str | Path, chunk_rows: int = 50_000, *, columns: list[str] | None = None,
                      text_columns: Sequence[str] = (),
                      max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[pd.DataFrame]:
    """Stream a CSV or Parquet file in chunks of ``chunk_rows`` rows (the last may be shorter).

    Memory stays bounded by the chunk size. Each chunk's index continues the previous one
    (the second chunk starts at ``chunk_rows``), so row numbers in errors are file-global.
    Raises the same errors as :func:`read_table`; problems with the file as a whole (missing,
    empty, bad header) are raised by this call, not later by the loop over its result.
    ``text_columns`` (CSV) are read verbatim as text, where present: a chunk cannot tell codes such as
    "01234" from numbers, so the caller names the columns whose text matters (a model's categories, ids).
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    path, fmt = _check_input(path)
    chunks = _csv_chunks(path, chunk_rows, columns, text_columns, max_line_bytes) if fmt == "csv" else \
        _parquet_chunks(path, chunk_rows, columns)
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


def _csv_chunks(path: Path, chunk_rows: int, columns: list[str] | None, text_columns: Sequence[str],
                max_line_bytes: int) -> Iterator[pd.DataFrame]:
    header = _csv_header(path, max_line_bytes)
    _check_columns(path, header, columns)
    text = [c for c in text_columns if c in header]
    # A bad line surfaces only when the chunk holding it is parsed, so the loop is inside the guard.
    with _translated_errors(path, "csv"), _open_csv(path, max_line_bytes) as handle, \
            _read_csv(handle, columns, text, chunksize=chunk_rows) as reader:
        yield from reader


def _parquet_chunks(path: Path, chunk_rows: int, columns: list[str] | None) -> Iterator[pd.DataFrame]:
    with _translated_errors(path, "parquet"):
        parquet = _arrow()[1].ParquetFile(path)
        _check_columns(path, parquet.schema_arrow.names, columns)
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas()


def make_directory(path: Path, failure: str) -> None:
    """`path.mkdir(parents=True, exist_ok=True)`, failing with a DataError that starts with `failure`
    and says why (which part of the path is a file, or the system's reason)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocking = next((p for p in (path, *path.parents) if p.is_file()), None)
        why = f"'{blocking}' is a file" if blocking is not None else (exc.strerror or str(exc))
        raise DataError(f"{failure} ({why}); choose a directory you can write to") from None


class AtomicTableWriter:
    """Stream DataFrame chunks into a CSV or Parquet file that appears only when complete.

    ``with AtomicTableWriter(path) as writer: writer.write(chunk)`` writes into a hidden temporary
    file beside ``path`` and renames it onto ``path`` when the block exits normally. If the block
    raises, the temporary file is deleted and an existing ``path`` is left as it was. Every chunk
    must have the columns of the first; Parquet also keeps the first chunk's column types. If no
    chunk is written, ``path`` becomes an empty table. ``rows_written`` counts the rows so far.

    The temporary file is ``.<name>.<host>.<pid>.<random>.tmp``. A process killed while writing
    (``kill -9``, power loss) cannot remove it, so entering the block also removes the temporary
    files of the same output that an earlier writer on this host left: older than this run, and
    written by a process that no longer exists. Signals are the caller's to handle (the CLI turns
    SIGTERM/SIGINT into an exception, so the block exits and the temporary file is deleted).
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
        started = time.time()
        make_directory(self.path.parent, f"cannot write '{self.path}': cannot create its directory")
        # Before this writer's own file exists: a signal turned into an exception while the stale files
        # were being looked for, after the file was made, left the file behind (__exit__ does not run
        # when __enter__ raises).
        remove_stale_temp_files(self.path, before=started)
        # Same directory so os.replace is a rename within one file system, hence atomic.
        self._tmp = self.path.with_name(f".{self.path.name}.{HOST_TAG}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            try:
                self._raw = open(self._tmp, "xb")
            except OSError as exc:
                raise DataError(f"cannot write '{self.path}' ({exc.strerror or exc}); choose a directory you can "
                                "write to") from None
            if self._format == "csv":
                gzipped = self.path.name.lower().endswith(".gz")
                binary = gzip.GzipFile(fileobj=self._raw, mode="wb") if gzipped else self._raw
                self._text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        except BaseException:  # e.g. a signal turned into an exception: __exit__ will not run
            if self._raw is not None:
                self._raw.close()
            self._tmp.unlink(missing_ok=True)
            raise
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
        pa, pq = _arrow()
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
                pa, pq = _arrow()
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


# Which host wrote a temporary file: a pid means nothing on another machine sharing the disk.
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to someone else
        return True
    return True


def temp_file_pattern(path: Path) -> re.Pattern[str]:
    """Names of AtomicTableWriter's temporary files for ``path``: groups host tag and pid."""
    return re.compile(rf"\.{re.escape(path.name)}\.([0-9a-f]{{8}})\.(\d+)\.[0-9a-f]{{32}}\.tmp")


def remove_stale_temp_files(path: str | Path, before: float) -> list[Path]:
    """Delete temporary files of ``path`` left by dead writers on this host, last modified before
    ``before`` (a time.time()); returns what was removed. Anything else is left alone."""
    path = Path(path)
    pattern, removed = temp_file_pattern(path), []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if match is None or match.group(1) != HOST_TAG or pid_alive(int(match.group(2))):
            continue
        try:
            if candidate.is_file() and not candidate.is_symlink() and candidate.stat().st_mtime < before:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue  # gone already, or not ours to delete: never a reason to fail the write
    return removed


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` (without its index) to a CSV or Parquet file atomically."""
    with AtomicTableWriter(path) as writer:
        writer.write(frame)


def _format_of(path: Path) -> Format:
    name = path.name.lower()
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    if path.is_dir():
        raise DataError(f"'{path}' is a directory; give a file name ending in {', '.join(SUPPORTED_SUFFIXES)}")
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


def _csv_header(path: Path, max_line_bytes: int) -> list[str]:
    """The header's column names. A first row with more fields than the header is refused: pandas
    would take its first fields as the row labels and shift every value one column over, silently
    (a later row with too many fields is refused by pandas itself)."""
    with _translated_errors(path, "csv"), _open_csv(path, max_line_bytes) as handle:
        first = pd.read_csv(handle, nrows=1)
    if len(first.columns) == 1:
        separator = next((c for c in (";", "\t", "|") if c in str(first.columns[0])), None)
        if separator is not None:
            name = str(first.columns[0])
            raise DataError(f"the header of '{path}' is one column, {name[:60]!r}: the file looks "
                            f"{separator!r}-separated; save it comma-separated")
    if not isinstance(first.index, pd.RangeIndex):
        raise DataError(f"could not parse '{path}' as CSV (line 2 has more fields than the header's "
                        f"{len(first.columns)}); {_CONTENT_HINTS['csv']}")
    names = [str(c) for c in first.columns]
    if any(re.fullmatch(r".+\.\d+", name) for name in names):  # perhaps pandas' rename of a repeated name
        with _translated_errors(path, "csv"), _open_csv(path, max_line_bytes) as handle:
            written = pd.read_csv(handle, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
        _check_columns(path, [w for w in written if w], None)  # blank names are pandas' "Unnamed: i", each once
    return names


def _csv_data_size(path: Path) -> int:
    """A lower bound of the bytes a parsed CSV takes in memory: its uncompressed size."""
    size = path.stat().st_size
    if path.name.lower().endswith(".gz") and size >= 18:
        with open(path, "rb") as f:  # gzip's trailer: the uncompressed size modulo 2**32
            f.seek(-4, os.SEEK_END)
            size = max(size, int.from_bytes(f.read(4), "little"))
    return size


def read_array(path: str | Path, key: str = "X") -> np.ndarray:
    """An array from a ``.npy`` file, or the array ``key`` of a ``.npz`` file, never unpickled.

    The size the array declares is checked against the memory available before it is read, and
    a ``.npy`` is memory-mapped, so a huge or malformed file fails with a DataError, not a crash.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"input file '{path}' does not exist; check the path")
    if not path.is_file():
        raise DataError(f"input path '{path}' is not a file; give the path of a .npy or .npz file")
    hint = "save it with numpy.save / numpy.savez (no object arrays)"
    try:
        if path.suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            check_fits_in_memory(path, array.nbytes)
            return np.asarray(array)
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if f"{key}.npy" not in names:
                raise DataError(f"'{path}' has no array named {key!r} (it has "
                                f"{', '.join(n.removesuffix('.npy') for n in names) or 'none'}); "
                                f"save the training data as {key}: numpy.savez(path, {key}=array)")
            check_fits_in_memory(path, archive.getinfo(f"{key}.npy").file_size)
        with np.load(path, allow_pickle=False) as loaded:
            return loaded[key]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"could not read '{path}' as a {path.suffix} array ({str(exc).strip()}); {hint}") from exc


def _check_columns(path: Path, available: list[str], wanted: list[str] | None) -> None:
    """The file's column names (as written) are distinct and hold the `wanted` ones."""
    repeated = sorted({c for c in available if available.count(c) > 1})
    if repeated:  # pandas would rename a CSV's second 'x' to 'x.1' and train on it under that name
        raise SchemaError(f"input file '{path}' has duplicate column names: {repeated}; give each column once",
                          column=repeated[0], reason="duplicate_column")
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
    except _content_errors(fmt) as exc:
        raise DataError(f"could not parse '{path}' as {_DISPLAY_NAMES[fmt]} ({str(exc).strip()}); "
                        f"{_CONTENT_HINTS[fmt]}") from exc
    except OSError as exc:
        raise DataError(f"could not read '{path}' ({exc}); check that the file is readable") from exc
