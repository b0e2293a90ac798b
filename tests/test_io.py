import gzip

import pandas as pd
import pytest

from anomaly_ae.data.io import AtomicTableWriter, iter_table_chunks, read_table, write_table
from anomaly_ae.data.synthetic import make_telemetry
from anomaly_ae.exceptions import DataError, SchemaError

SUFFIXES = ["csv", "csv.gz", "parquet", "pq"]


@pytest.fixture(scope="module")
def frame():
    return make_telemetry(1000, 0.1, seed=0)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_is_exact(tmp_path, frame, suffix):
    path = tmp_path / "nested" / "dir" / f"table.{suffix}"
    write_table(frame, path)
    pd.testing.assert_frame_equal(read_table(path), frame, check_exact=True)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_chunked_read_matches_whole_read_with_global_index(tmp_path, frame, suffix):
    path = tmp_path / f"table.{suffix}"
    # Written in 128-row pieces so Parquet has several row groups that do not align with chunks.
    with AtomicTableWriter(path) as writer:
        for start in range(0, len(frame), 128):
            writer.write(frame.iloc[start:start + 128])
    assert writer.rows_written == len(frame)
    chunks = list(iter_table_chunks(path, chunk_rows=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    assert [c.index[0] for c in chunks] == [0, 300, 600, 900]
    pd.testing.assert_frame_equal(pd.concat(chunks), read_table(path), check_exact=True)
    pd.testing.assert_frame_equal(pd.concat(chunks), frame, check_exact=True)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_column_selection_keeps_requested_order(tmp_path, frame, suffix):
    path = tmp_path / f"table.{suffix}"
    write_table(frame, path)
    assert list(read_table(path, columns=["latency_ms", "mode"]).columns) == ["latency_ms", "mode"]
    chunk = next(iter_table_chunks(path, 100, columns=["latency_ms", "mode"]))
    assert list(chunk.columns) == ["latency_ms", "mode"]
    with pytest.raises(SchemaError) as info:
        read_table(path, columns=["mode", "fan_rpm"])
    assert "no column(s) ['fan_rpm']" in str(info.value) and "cpu_util_pct" in str(info.value)
    assert info.value.column == "fan_rpm" and info.value.reason == "missing_column"


@pytest.mark.parametrize("suffix", ["csv", "csv.gz", "parquet"])
def test_failed_write_leaves_old_file_untouched(tmp_path, frame, suffix):
    path = tmp_path / f"scores.{suffix}"
    write_table(frame.head(10), path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with AtomicTableWriter(path) as writer:
            writer.write(frame.iloc[:500])
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_a_signal_while_entering_leaves_no_temporary_file(tmp_path, frame, monkeypatch):
    """The CLI turns SIGTERM into an exception wherever the main thread is; while the writer looked for
    stale temporary files its own was already made, and a failed __enter__ has no __exit__ to remove it
    (seen once in CI: tests/test_interrupted_scoring.py signals as soon as the file appears)."""
    import anomaly_ae.data.io as io_module

    def interrupted(path, before):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_module, "remove_stale_temp_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with AtomicTableWriter(tmp_path / "scores.csv") as writer:
            writer.write(frame.head(3))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_chunk_with_other_columns_is_rejected_and_nothing_written(tmp_path, frame, suffix):
    path = tmp_path / f"scores.{suffix}"
    with pytest.raises(SchemaError, match="same columns"):
        with AtomicTableWriter(path) as writer:
            writer.write(frame.iloc[:10])
            writer.write(frame.iloc[10:20].drop(columns="mode"))
    assert list(tmp_path.iterdir()) == []


def test_parquet_chunk_with_incompatible_types_is_rejected(tmp_path):
    with pytest.raises(SchemaError, match="column types do not match"):
        with AtomicTableWriter(tmp_path / "x.parquet") as writer:
            writer.write(pd.DataFrame({"a": [1, 2]}))
            writer.write(pd.DataFrame({"a": ["x", "y"]}))


def test_write_outside_with_block_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="inside its 'with' block"):
        AtomicTableWriter(tmp_path / "x.csv").write(pd.DataFrame({"a": [1]}))


def test_missing_file(tmp_path):
    for call in (read_table, iter_table_chunks):
        with pytest.raises(DataError, match="does not exist"):
            call(tmp_path / "nope.csv")


def test_unsupported_extension_lists_supported_ones(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"x")
    for call in (read_table, iter_table_chunks, AtomicTableWriter):
        with pytest.raises(DataError) as info:
            call(path)
        message = str(info.value)
        assert "unsupported file type" in message
        assert all(s in message for s in (".csv", ".csv.gz", ".parquet", ".pq"))
    (tmp_path / "out").mkdir()  # score -o out, an existing directory, was an "unsupported file type"
    with pytest.raises(DataError, match="'.*out' is a directory; give a file name ending in .csv"):
        AtomicTableWriter(tmp_path / "out")


@pytest.mark.parametrize("name, content", [
    ("empty.csv", b""),
    ("blank.csv", b"\n\n"),
    ("header_only.csv", b"a,b,c\n"),
    ("header_only.csv.gz", gzip.compress(b"a,b,c\n")),
    ("empty.parquet", b""),
], ids=lambda value: value if isinstance(value, str) else "")
def test_files_without_rows(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match="has no rows"):
        read_table(path)
    with pytest.raises(DataError, match="has no rows"):
        iter_table_chunks(path)  # raised by the call itself, before any loop


def test_parquet_with_schema_but_no_rows(tmp_path):
    path = tmp_path / "empty.parquet"
    write_table(pd.DataFrame({"a": pd.Series([], dtype=float)}), path)
    for call in (read_table, iter_table_chunks):
        with pytest.raises(DataError, match="has no rows"):
            call(path)


@pytest.mark.parametrize("name, content, fragment", [
    ("ragged.csv", b"a,b\n1,2\n3,4,5,6\n", "could not parse"),
    # pandas would read the extra first field as the row label and shift every value a column over
    ("shifted.csv", b"a,b\n9,1,2\n3,4\n", "line 2 has more fields than the header"),
    ("semicolons.csv", b"a;b\n1;2\n", "looks ';'-separated"),
    ("binary.csv", b"a,b\n\xff\xfe\x00,1\n", "could not parse"),
    ("broken.csv.gz", b"not gzip at all", "could not parse"),
    ("garbage.parquet", b"definitely not parquet", "could not parse"),
])
def test_unparsable_files(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    for call in (read_table, lambda p: list(iter_table_chunks(p))):
        with pytest.raises(DataError) as info:
            call(path)
        assert fragment in str(info.value) and name in str(info.value)


def test_bad_line_in_a_later_chunk_fails_while_streaming(tmp_path):
    path = tmp_path / "late.csv"
    path.write_text("a,b\n" + "1,2\n" * 50 + "1,2,3\n")
    chunks = iter_table_chunks(path, chunk_rows=10)
    with pytest.raises(DataError, match="could not parse .* as CSV"):
        list(chunks)


def test_invalid_chunk_rows(tmp_path, frame):
    path = tmp_path / "t.csv"
    write_table(frame.head(5), path)
    with pytest.raises(ValueError, match="chunk_rows must be an integer >= 1"):
        iter_table_chunks(path, chunk_rows=0)


def test_pyarrow_is_imported_only_for_parquet(tmp_path):
    """The service saves and loads models through this module (persistence's staging names) and must not map
    pyarrow's libraries for it: imported on the first Parquet file only, and CSV works without it at all."""
    import subprocess
    import sys

    path = tmp_path / "t.csv"
    make_telemetry(5, 0.0, seed=0).to_csv(path, index=False)
    code = ("import sys; sys.modules['pyarrow'] = None; import pandas; import anomaly_ae.data.io as io; "
            f"assert len(io.read_table({str(path)!r})) == 5; io.write_table(io.read_table({str(path)!r}), "
            f"{str(tmp_path / 'u.csv')!r}); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_na_and_none_are_values_in_text_columns_and_missing_in_numbers(tmp_path):
    from anomaly_ae.data.schema import Column, Schema

    (tmp_path / "na.csv").write_text("region,latency,plan,empty\nEU,1.5,basic,NA\nNA,NA,None,NA\n"
                                     "APAC,,null,NA\nNA,2,nan,NA\n")
    frame = read_table(tmp_path / "na.csv")
    assert frame["region"].tolist() == ["EU", "NA", "APAC", "NA"]  # North America, not a missing value
    assert frame["plan"].iloc[1] == "None" and frame["plan"].iloc[2:].isna().all()  # "null", "nan": missing
    schema = Schema.infer(frame)
    assert [(c.name, c.kind, c.allow_missing) for c in schema.columns] == [
        ("region", "categorical", False), ("latency", "numeric", True), ("plan", "categorical", True),
        ("empty", "numeric", True)]  # a column of NA alone: numbers that are all missing
    assert schema.columns[0].categories == ("APAC", "EU", "NA")
    checked, report = schema.check(frame)
    assert checked["latency"].isna().tolist() == [False, True, True, False] and report.missing_values["latency"] == 2
    # chunks agree with the whole file: the reader leaves NA to the schema
    chunks = list(iter_table_chunks(tmp_path / "na.csv", 1))
    assert [schema.check(c)[0]["region"].iloc[0] for c in chunks] == ["EU", "NA", "APAC", "NA"]
    assert pd.isna(schema.check(chunks[1])[0]["latency"].iloc[0])
    # a model whose training CSV never held "NA" in a text column (pandas read it as missing) still does
    old = Schema(columns=[Column("region", "categorical", allow_missing=True, categories=("APAC", "EU"))])
    checked, report = old.check(frame[["region"]])
    assert checked["region"].isna().tolist() == [False, True, False, True] and not report.unseen_categories


def test_codes_with_leading_zeros_stay_text_and_other_numbers_stay_numbers(tmp_path):
    from anomaly_ae.data.io import code_columns

    (tmp_path / "codes.csv").write_text("zip,account,count,ratio,zero,pad\n01234,007,3,0.5,0,1\n10001,12,4,0.25,0,\n"
                                        "02134,,5,1.5,0,0003\n")
    frame = read_table(tmp_path / "codes.csv")
    assert frame["zip"].tolist() == ["01234", "10001", "02134"]
    assert frame["account"].iloc[:2].tolist() == ["007", "12"] and pd.isna(frame["account"].iloc[2])
    assert frame["pad"].iloc[0] == "1" and pd.isna(frame["pad"].iloc[1]) and frame["pad"].iloc[2] == "0003"
    for name in ("count", "ratio", "zero"):  # no leading zero ("0" and "0.5" are numbers)
        assert frame[name].dtype.kind in "if", name
    assert code_columns(frame) == {"zip": "01234", "account": "007", "pad": "0003"}
    assert code_columns(pd.DataFrame({"plan": ["01", "gold"], "n": [1, 2]})) == {}  # text, not codes


def test_text_columns_are_read_verbatim_whole_and_in_chunks(tmp_path):
    (tmp_path / "ids.csv").write_text("id,x\n0001,1.0\n2,2.5\n3.50,\n")
    assert read_table(tmp_path / "ids.csv", text_columns=["id", "absent"])["id"].tolist() == ["0001", "2", "3.50"]
    chunks = list(iter_table_chunks(tmp_path / "ids.csv", 2, text_columns=["id"]))
    assert [v for c in chunks for v in c["id"]] == ["0001", "2", "3.50"]
    assert [c["x"].dtype.kind for c in chunks] == ["f", "f"]
    # without them, a chunk of numbers is read as numbers, as pandas does
    assert list(iter_table_chunks(tmp_path / "ids.csv", 2))[1]["id"].tolist() == [3.5]


def test_duplicate_column_names_are_refused_in_csv_and_parquet(tmp_path):
    """pandas renamed a CSV's second 'x' to 'x.1', so a model trained on 'x.1'; a Parquet file's twin columns
    crashed training with a traceback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "twice.csv").write_text("x,y,x\n1,2,3\n4,5,6\n")
    pq.write_table(pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["x", "x"]),
                   tmp_path / "twice.parquet")
    for name in ("twice.csv", "twice.parquet"):
        with pytest.raises(SchemaError, match=r"has duplicate column names: \['x'\]; give each column once"):
            read_table(tmp_path / name)
        with pytest.raises(SchemaError, match="duplicate column names"):
            next(iter_table_chunks(tmp_path / name, 1))
    (tmp_path / "dotted.csv").write_text("v1.2,x.1\n1,2\n")  # names with dots are no duplicates
    assert read_table(tmp_path / "dotted.csv").columns.tolist() == ["v1.2", "x.1"]
    (tmp_path / "blank.csv").write_text(",,z.1\n1,2,3\n")  # nor are blank names, which pandas numbers
    assert read_table(tmp_path / "blank.csv").columns.tolist() == ["Unnamed: 0", "Unnamed: 1", "z.1"]


def test_an_infinity_in_a_csv_reads_without_numpy_warnings(tmp_path):
    """Looking for codes with leading zeros took np.mod of inf: two RuntimeWarning lines before the error."""
    import warnings

    (tmp_path / "inf.csv").write_text("a,b\n1,2\ninf,3\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_table(tmp_path / "inf.csv")["a"].tolist() == [1.0, float("inf")]
