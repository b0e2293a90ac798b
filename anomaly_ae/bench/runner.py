"""The benchmark run loop: one CSV row per (dataset, seed, detector), resumable.

Rows are appended (and flushed) one by one, so an interrupted run resumes where it stopped:
rows already in the CSV are skipped, whether they hold a result or an error. ``rerun``
drops the existing rows of the named detectors (within the selected datasets and seeds) and
computes them again, e.g. after a default changed.

Appends and rewrites take an exclusive ``flock`` on the CSV, so two runners (say, the PyOD
half and the anomaly_ae half) may write the same file at the same time.
"""

from __future__ import annotations

import csv
import fcntl
import os
import time
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from . import detectors as det
from .protocol import check_entry, dataset_name, load, load_fingerprints, split

COLUMNS = ["dataset", "seed", "detector", "auroc", "auprc", "fit_s", "score_s",
           "n_train", "n_test", "fpr_at_threshold", "error"]

FINGERPRINT_NAME = "protocol_fingerprint.json"
ANCHOR_NAME = "pyod_anchor_dev.csv"


class BenchmarkError(RuntimeError):
    """A problem with the benchmark's inputs (message is meant for the user, no traceback)."""


# ----------------------------------------------------------------------------- locations

def shared_bench_file(data_dir: str | Path, name: str) -> Path | None:
    """``<data_dir>/../../bench/<name>`` (the layout of the shared folder) if it exists."""
    p = Path(data_dir).resolve().parent.parent / "bench" / name
    return p if p.exists() else None


def default_fingerprints(data_dir: str | Path) -> Path | None:
    return shared_bench_file(data_dir, FINGERPRINT_NAME)


def default_anchor(data_dir: str | Path) -> Path | None:
    return shared_bench_file(data_dir, ANCHOR_NAME)


# ----------------------------------------------------------------------------- CSV I/O

@contextmanager
def _locked_append(path: Path) -> Iterator:
    """Open ``path`` for appending under an exclusive flock (re-opening if it was replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(path, "a", newline="")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            same = os.path.exists(path) and os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()
    try:
        yield f
    finally:
        f.flush()
        os.fsync(f.fileno())
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All rows of a result CSV (empty list if the file does not exist or is empty).

    Reads under the CSV's lock, so a row being appended by another run is never half-read.
    """
    path = Path(path)
    if not path.exists():
        return []
    with _locked_append(path):
        return _read_rows_unlocked(path)


def _read_rows_unlocked(path: Path) -> list[dict[str, str]]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise BenchmarkError(
                f"{path} has columns {reader.fieldnames}, expected {COLUMNS}; "
                "use another --out file or move the old one away")
        return [r for r in reader if r.get("dataset")]


def append_row(path: str | Path, row: dict) -> None:
    """Append one row (writing the header first if the file is new/empty), flushed to disk."""
    path = Path(path)
    with _locked_append(path) as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        if f.tell() == 0:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in COLUMNS})


def drop_rows(path: str | Path, predicate) -> int:
    """Remove rows for which ``predicate(row)`` is true (atomic rewrite). Returns how many."""
    path = Path(path)
    if not path.exists():
        return 0
    with _locked_append(path):
        rows = _read_rows_unlocked(path)
        keep = [r for r in rows if not predicate(r)]
        n = len(rows) - len(keep)
        if n:
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            with open(tmp, "w", newline="") as g:
                w = csv.DictWriter(g, fieldnames=COLUMNS, lineterminator="\n")
                w.writeheader()
                w.writerows(keep)
                g.flush()
                os.fsync(g.fileno())
            os.replace(tmp, path)
    return n


# ----------------------------------------------------------------------------- one run

def _fmt(x: float | None, nd: int) -> str:
    return "" if x is None else repr(round(float(x), nd))


def _one_line(msg: str, limit: int = 500) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def evaluate(name: str, seed: int, X_train: np.ndarray, X_test: np.ndarray,
             y_test: np.ndarray) -> dict:
    """Fit + score one detector; always returns a row (a failure becomes an ``error`` row).

    ``fit_s`` / ``score_s`` are wall-clock seconds of ``fit`` and ``decision_function`` (for
    PyOD detectors including the harness scaler). ``fpr_at_threshold`` = share of test
    normals flagged by ``predict`` (anomaly_ae detectors only; not timed).
    """
    row: dict = {"detector": name, "seed": seed, "n_train": len(X_train), "n_test": len(X_test),
                 "fit_s": "", "score_s": ""}
    try:
        with warnings.catch_warnings():
            if det.family(name) == det.PYOD_FAMILY:  # keep the log readable (PCA's 0-division...)
                warnings.simplefilter("ignore")
            _fit_and_score(row, name, seed, X_train, X_test, y_test)
    except Exception as e:  # noqa: BLE001 - any failure is recorded, the run goes on
        row["auroc"] = row["auprc"] = row["fpr_at_threshold"] = ""
        row["error"] = _one_line(f"{type(e).__name__}: {e}")
    return row


def _fit_and_score(row: dict, name: str, seed: int, X_train: np.ndarray, X_test: np.ndarray,
                   y_test: np.ndarray) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    d = det.make_detector(name, seed)
    t0 = time.perf_counter()
    d.fit(X_train)
    row["fit_s"] = _fmt(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    score = np.asarray(d.decision_function(X_test), dtype=np.float64).ravel()
    row["score_s"] = _fmt(time.perf_counter() - t0, 3)
    if score.shape != (len(X_test),):
        raise ValueError(f"decision_function returned shape {score.shape}, "
                         f"expected ({len(X_test)},)")
    bad = int(np.count_nonzero(~np.isfinite(score)))
    if bad:
        raise ValueError(f"{bad} of {len(score)} test scores are non-finite")
    row["auroc"] = _fmt(roc_auc_score(y_test, score), 6)
    row["auprc"] = _fmt(average_precision_score(y_test, score), 6)
    if d.has_threshold:
        pred = np.asarray(d.predict(X_test[y_test == 0])).ravel()
        row["fpr_at_threshold"] = _fmt(np.mean(pred == 1), 6)


# ----------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class DatasetInfo:
    name: str
    path: Path
    n_rows_used: int  # n_train + n_test (identical for every seed)
    d: int


def discover(data_dir: str | Path, datasets: Sequence[str] | None = None) -> list[DatasetInfo]:
    """Datasets in ``data_dir`` (optionally only ``datasets``), smallest (rows used, d) first."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BenchmarkError(
            f"data folder {data_dir} does not exist; point --data-dir at a folder of ADBench .npz files")
    paths = {dataset_name(p): p for p in sorted(data_dir.glob("*.npz"))}
    if not paths:
        raise BenchmarkError(
            f"no .npz files in {data_dir}; point --data-dir at a folder of ADBench .npz files")
    if datasets:
        unknown = [n for n in datasets if n not in paths]
        if unknown:
            raise BenchmarkError(f"dataset(s) not found in {data_dir}: {', '.join(unknown)}")
        paths = {n: paths[n] for n in datasets}
    infos = []
    for name, p in paths.items():
        X, y = _load(p)
        n_normal, n_anom = int(np.sum(y == 0)), int(np.sum(y == 1))
        n_train = min((6 * n_normal) // 10, 10_000)
        n_test = min(n_normal - n_train, 20_000) + min(n_anom, 5_000)
        infos.append(DatasetInfo(name, p, n_train + n_test, X.shape[1]))
    return sorted(infos, key=lambda i: (i.n_rows_used, i.d, i.name))


def resolve_detectors(detectors: Sequence[str] | None, warn=print) -> list[str]:
    """Validate names; ``None`` = every detector whose library is importable (others warned)."""
    if detectors:
        unknown = [n for n in detectors if n not in det.ALL_DETECTORS]
        if unknown:
            raise BenchmarkError(
                f"unknown detector(s): {', '.join(unknown)}; known (case-sensitive): "
                f"{', '.join(det.ALL_DETECTORS)}")
        for n in detectors:
            try:
                det.check_available(n)
            except det.DetectorUnavailable as e:
                raise BenchmarkError(str(e)) from e
        return list(dict.fromkeys(detectors))
    chosen = []
    for n in det.ALL_DETECTORS:
        try:
            det.check_available(n)
            chosen.append(n)
        except det.DetectorUnavailable as e:
            warn(f"skipping {n}: {e}")
    return chosen


@contextmanager
def thread_limits(threads: int) -> Iterator[None]:
    """Limit torch, BLAS and OpenMP threads to ``threads`` for the duration of the block."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    old = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(int(threads))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        threadpool_limits = None
    try:
        if threadpool_limits is not None:
            with threadpool_limits(limits=int(threads)):
                yield
        else:  # pragma: no cover
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(old)


# ----------------------------------------------------------------------------- main loop

def run_benchmark(
    data_dir: str | Path,
    out_csv: str | Path,
    seeds: Iterable[int] = (0, 1, 2),
    datasets: Sequence[str] | None = None,
    detectors: Sequence[str] | None = None,
    progress: bool = True,
    rerun: Iterable[str] = (),
    threads: int = 1,
    fingerprints: str | Path | None | bool = True,
    warm_up: bool = True,
    console=None,
) -> Path:
    """Run every missing (dataset, seed, detector) and append the rows to ``out_csv``.

    Order: seeds outermost (all datasets for seed 0 first), datasets smallest first,
    detectors in the given order. ``datasets``/``detectors`` = ``None`` means all
    (``None`` detectors = all whose library can be imported). ``rerun`` = detectors whose
    rows for the selected datasets and seeds are dropped and recomputed.

    ``fingerprints``: path of ``protocol_fingerprint.json``; ``True`` = look for it next to
    the shared data folder (``<data_dir>/../../bench``); ``None``/``False`` = don't check.
    Each split is checked before it is used; a mismatch raises :class:`BenchmarkError`.
    Datasets without a fingerprint entry (non-ADBench files) are not checked.
    ``warm_up``: run each detector once on tiny data first so one-off costs (imports, JIT)
    do not land in the first timed row. ``threads``: torch/BLAS/OpenMP thread limit.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = console or Console(stderr=True)
    out_csv = Path(out_csv)
    seeds = [int(s) for s in seeds]
    infos = discover(data_dir, datasets)
    names = resolve_detectors(detectors, warn=lambda m: console.print(f"[yellow]{m}[/]"))
    rerun = list(dict.fromkeys(rerun or ()))
    unknown_rerun = [n for n in rerun if n not in det.ALL_DETECTORS]
    if unknown_rerun:
        raise BenchmarkError(f"unknown detector(s) in rerun: {', '.join(unknown_rerun)}")
    for n in rerun:  # a rerun detector is always (re)computed
        if n not in names:
            names.append(n)

    if fingerprints is True:
        fingerprints = default_fingerprints(data_dir)
    fp = load_fingerprints(fingerprints) if fingerprints else {}

    selected_ds = {i.name for i in infos}
    if rerun:
        rr, ss = set(rerun), {str(s) for s in seeds}
        n = drop_rows(out_csv, lambda r: r["detector"] in rr and r["dataset"] in selected_ds
                      and r["seed"] in ss)
        if n:
            console.print(f"dropped {n} existing row(s) of {', '.join(rerun)} to recompute")

    done = {(r["dataset"], int(r["seed"]), r["detector"]) for r in read_rows(out_csv)}
    plan = [(s, i) for s in seeds for i in infos]
    todo = [(s, i, n) for s, i in plan for n in names if (i.name, s, n) not in done]
    skipped = len(plan) * len(names) - len(todo)
    if skipped:
        console.print(f"resuming: {skipped} row(s) already in {out_csv}, {len(todo)} to run")

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=not progress)
    with thread_limits(threads), prog:
        task = prog.add_task("benchmark", total=len(todo))
        if warm_up:
            for n in dict.fromkeys(n for _, _, n in todo):
                prog.update(task, description=f"warming up {n}")
                det.warm_up(n)
        cache: tuple | None = None
        for seed, info, name in todo:
            prog.update(task, description=f"{info.name} seed={seed} {name}")
            if cache is None or cache[0] != (info.name, seed):
                X, y = _load(info.path)
                entry = fp.get((info.name, seed))
                if entry is not None:
                    diffs = check_entry(entry, y, seed)
                    if diffs:
                        raise BenchmarkError(
                            f"split of {info.name} seed {seed} does not match the protocol "
                            f"fingerprint: {diffs[0]}")
                cache = ((info.name, seed), split(X, y, seed))
                del X, y
            X_train, X_test, y_test = cache[1]
            row = evaluate(name, seed, X_train, X_test, y_test)
            row["dataset"] = info.name
            append_row(out_csv, row)
            if progress:
                res = (f"AUROC {row['auroc']}" if not row.get("error")
                       else f"[red]ERROR {escape(row['error'][:120])}[/]")
                secs = sum(float(row[k]) for k in ("fit_s", "score_s") if row[k])
                prog.console.print(f"{info.name} seed={seed} {name}: {res} ({secs:.1f}s)",
                                   markup=True, highlight=False)
            prog.advance(task)
    return out_csv


def parse_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(t) for t in parse_list(text)]
    except ValueError as e:
        raise BenchmarkError(f"--seeds must be comma-separated integers, got {text!r}") from e
    if not seeds:
        raise BenchmarkError("--seeds names no seed; give at least one, e.g. --seeds 0,1,2")
    return seeds


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`protocol.load`, its failures (not an .npz, no X or y, shapes that do not match) as BenchmarkError."""
    try:
        if not zipfile.is_zipfile(path):  # numpy would call it pickled data, which it is not
            raise ValueError("not a .npz (zip) archive")
        return load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise BenchmarkError(f"{path} is not an ADBench .npz with arrays X (rows x features) and y (labels, "
                             f"1 = anomaly): {reason}") from None


__all__ = ["COLUMNS", "BenchmarkError", "run_benchmark", "evaluate", "discover", "read_rows",
           "append_row", "drop_rows", "default_fingerprints", "default_anchor", "parse_list",
           "parse_seeds"]
