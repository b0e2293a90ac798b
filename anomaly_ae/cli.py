"""The `anomaly-ae` command line: parse arguments, make one library call, print the result.

Errors the package raises on purpose are printed as one red line and exit with code 2; only a
bug shows a traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from anomaly_ae.console import clean_exit_on_signals, console, friendly_errors, kept_if_logging_fails
from anomaly_ae.runtime import DEFAULT_THREADS, set_threads

DEFAULT_MAX_LINE_BYTES = 1 << 20  # as anomaly_ae.data.io (not imported here: it loads pandas)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

app = typer.Typer(help="Anomaly detection with autoencoders trained on normal data.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
def _split_list(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def read_training_data(path: Path, drop_cols: list[str], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                       text_columns: Sequence[str] = (), *, for_training: bool = False) -> pd.DataFrame | np.ndarray:
    """Tables (CSV/Parquet) become DataFrames; .npy/.npz arrays (e.g. images) stay arrays. For training, a
    warning names the columns of codes written with leading zeros, which a model learns as categories."""
    from anomaly_ae.data.io import code_columns, read_array, read_table
    from anomaly_ae.exceptions import DataError

    if path.suffix in (".npy", ".npz"):
        return read_array(path)
    frame = read_table(path, text_columns=text_columns, max_line_bytes=max_line_bytes)
    unknown = [c for c in drop_cols if c not in frame.columns]
    if unknown:
        raise DataError(f"--drop-cols names column(s) not in {path}: {', '.join(unknown)}")
    if drop_cols and len(set(drop_cols)) >= len(frame.columns):
        raise DataError(f"--drop-cols names every column of {path}, so nothing is left to learn from; drop only ids "
                        "and labels")
    frame = frame.drop(columns=drop_cols)
    codes = code_columns(frame) if for_training else {}
    if codes:
        shown = ", ".join(f"'{name}' (e.g. {value!r})" for name, value in list(codes.items())[:5])
        warnings.warn(f"{shown}: whole numbers written with leading zeros, read as codes and learned as categories, "
                      "not quantities; if they are ids, leave them out with --drop-cols", UserWarning, stacklevel=2)
    return frame


@app.command()
@friendly_errors
def train(
    data: Optional[Path] = typer.Argument(None, help="Normal training data: CSV, Parquet, or .npy/.npz array "
                                                     "(or --prometheus SPEC instead)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Directory to save the model in (optional with --experiment/--register); "
                                            "a model saved there before is replaced, another directory refused."),
    model: Optional[str] = typer.Option(None, help="Model: for rows hybrid (the default) or another name in "
                                                   "anomaly_ae.models.DETECTOR_MODELS; for series (with --time-col, "
                                                   "--series-col or --window) a name in SERIES_MODELS (README lists them)."),
    time_col: Optional[str] = typer.Option(None, help="Timestamp column: train a series model over windows in time."),
    series_col: Optional[str] = typer.Option(None, help="Series id column (host, sensor): one model for all series, "
                                                        "windows never cross them."),
    window: Optional[str] = typer.Option(None, help="Steps per window of a series model, or 'auto' (the history's "
                                                    "dominant period); default: the model's (64 for "
                                                    "knn_multiscale, 32 for the others)."),
    covariates: Optional[str] = typer.Option(None, help="Series models: calendar inputs read from --time-col, "
                                                        "comma-separated: time_of_day, day_of_week (for daily or "
                                                        "weekly patterns)."),
    max_gap: Optional[int] = typer.Option(None, help="Series models: longest gap (in steps) filled with the last "
                                                      "row; a longer one restarts the window (default 3)."),
    alert_min_steps: Optional[int] = typer.Option(None, help="Series models' alert rule: flagged steps needed (k of "
                                                              "n; default 3)."),
    alert_within: Optional[int] = typer.Option(None, help="Series models' alert rule: among the last n steps "
                                                           "(default 5)."),
    alert_cooldown: Optional[int] = typer.Option(None, help="Series models' alert rule: steps without the k-of-n "
                                                             "condition before a new alert (default 12)."),
    target_fpr: float = typer.Option(0.01, help="False-positive rate the threshold is calibrated to."),
    drop_cols: Optional[str] = typer.Option(None, help="Comma-separated columns to ignore (ids, labels); the model "
                                                       "remembers them and ignores them in what it scores later."),
    epochs: int = typer.Option(200, help="Maximum training epochs (early stopping usually ends sooner)."),
    n_estimators: Optional[int] = typer.Option(None, help="Differently seeded networks whose scores are averaged "
                                                          "(default: 3 for hybrid, else 1)."),
    score: Optional[str] = typer.Option(None, help="Score type (recon, elbo, iwae, recon+latent)."),
    seed: int = typer.Option(0, min=0, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: int = typer.Option(DEFAULT_THREADS, min=1, help="torch CPU threads for this process."),
    max_line_bytes: int = typer.Option(DEFAULT_MAX_LINE_BYTES, min=1,
                                       help="Longest CSV line accepted, in bytes (refuses files without newlines)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    experiment: Optional[str] = typer.Option(None, help="Log the run to this MLflow experiment."),
    register: Optional[str] = typer.Option(None, help="Register the model as a new version of this MLflow model "
                                                      "(logs a run, in experiment 'anomaly-ae' unless --experiment)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Labelled CSV/Parquet: log AUROC, AUPRC, ROC/PR."),
    label_col: Optional[str] = typer.Option(None, help="Label column of --eval (1 anomaly, 0 normal)."),
    tracking_uri: Optional[str] = typer.Option(
        None, help="MLflow tracking URI; default MLFLOW_TRACKING_URI, else ./mlflow.db + ./mlartifacts."),
    augment: Optional[str] = typer.Option(None, help="Add synthetic normal rows to the training split: from a "
                                                     "generator trained on the data first (cvae, gan or cgan), "
                                                     "or from a saved one (directory or models:/NAME@ALIAS)."),
    augment_rows: int = typer.Option(1000, help="Synthetic rows to add with --augment."),
    balance_col: Optional[str] = typer.Option(None, help="With --augment: condition on this column and give the "
                                                         "synthetic rows to its rarest values first."),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="Save the training state here so that a killed run "
                                                             "can continue with --resume."),
    checkpoint_every: int = typer.Option(1, help="Epochs between checkpoints (with --checkpoint-dir)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the training saved in --checkpoint-dir (same data "
                                                        "and options); finished networks are not retrained."),
    prometheus: Optional[Path] = typer.Option(None, "--prometheus", help="Train a series model on the metrics a "
                                                                          "watch spec (YAML/TOML) names, fetched from "
                                                                          "Prometheus over --start..--end."),
    start: str = typer.Option("-14d", help="With --prometheus: start of the history (-14d, RFC 3339, unix seconds)."),
    end: str = typer.Option("now", help="With --prometheus: end of the history."),
) -> None:
    """Train a detector on normal data; save it, and/or log the run to MLflow and register the model."""
    from anomaly_ae.detector import Detector
    from anomaly_ae.exceptions import DataError
    from anomaly_ae.persistence import check_writable
    from anomaly_ae.training import Checkpointing

    set_threads(threads)
    tracked = experiment is not None or register is not None
    if out is None and not tracked:
        raise DataError("say where the model goes: --out DIR, and/or --experiment NAME / --register NAME for MLflow")
    if register is not None:
        from anomaly_ae.registry import check_model_name

        check_model_name(register)
    if balance_col is not None and augment is None:
        raise DataError("--balance-col chooses which rows --augment adds; give --augment too, or leave it out")
    if (data is None) == (prometheus is None):
        raise DataError("give the training data: a file (anomaly-ae train DATA ...) or a watch spec "
                        "(anomaly-ae train --prometheus SPEC ...), not both")
    series_options = {"max_gap": max_gap, "alert_min_steps": alert_min_steps, "alert_within": alert_within,
                      "alert_cooldown": alert_cooldown}
    given = {k: v for k, v in series_options.items() if v is not None}
    if prometheus is not None:
        if augment or checkpoint_dir or eval_data or drop_cols:
            raise DataError("--augment, --checkpoint-dir, --eval and --drop-cols apply to training files, "
                            "not to --prometheus")
        if given:
            raise DataError(f"with --prometheus, set {', '.join(given)} in the watch spec's model: section")
        if out is not None:
            check_writable(out)
        if tracked:
            _check_tracking(tracking_uri, register, "series")
        from anomaly_ae.watch.command import train_from_prometheus

        with clean_exit_on_signals():
            train_from_prometheus(prometheus, start, end, model=model, window=_window(window) if window else None,
                                  out=out, experiment=experiment,
                                  register=register, tracking_uri=tracking_uri, device=device, progress=progress)
        return
    if (eval_data is not None or label_col is not None) and not (tracked and eval_data and label_col):
        raise DataError("--eval DATA --label-col COL go together, with --experiment or --register "
                        "(the evaluation is logged to the run)")
    if checkpoint_dir is None and resume:
        raise DataError("--resume continues the training saved in --checkpoint-dir DIR; give that too")
    if out is not None:  # an unwritable --out fails now, not after the training
        check_writable(out)
    eval_frame = None
    if eval_data is not None:  # read now: a file without its label column fails before the training
        from anomaly_ae.data.io import read_table

        eval_frame = read_table(eval_data, max_line_bytes=max_line_bytes)
        if label_col not in eval_frame.columns:
            raise DataError(f"--label-col '{label_col}' is not a column of {eval_data}; it has "
                            f"{', '.join(map(str, eval_frame.columns))}")
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = Checkpointing(checkpoint_dir, every=checkpoint_every, resume=resume)
        checkpoint.prepare()
    for option, column in (("--time-col", time_col), ("--series-col", series_col)):
        if column is not None and column in _split_list(drop_cols):
            raise DataError(f"--drop-cols removes '{column}', the {option} column the series model reads; "
                            "leave it out of --drop-cols")
    series = any(option is not None for option in (time_col, series_col, window, covariates))
    if given and not series:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise DataError(f"{flags} apply to series models: give --time-col (and --series-col) to train one")
    ignored = _split_list(drop_cols) or None  # the model remembers them: files like this one score as they are
    if not series:
        model = model or "hybrid"
        detector = Detector(model=model, target_fpr=target_fpr, epochs=epochs, n_estimators=n_estimators,
                            score=score, ignore_columns=ignored, random_state=seed, device=device, verbose=progress)
    else:
        from anomaly_ae.series_detector import DEFAULT_SERIES_MODEL, SeriesDetector

        if augment is not None:
            raise DataError("--augment adds independent rows; it does not apply to series models")
        model = model or DEFAULT_SERIES_MODEL
        detector = SeriesDetector(model=model, window=_window(window), time_col=time_col, series_col=series_col,
                                  covariates=tuple(_split_list(covariates)), target_fpr=target_fpr,
                                  epochs=epochs, n_estimators=n_estimators, score=score, ignore_columns=ignored,
                                  random_state=seed, device=device, verbose=progress, **given)
    detector.validate_params()  # a bad option fails now, not after reading a large file
    X = read_training_data(data, _split_list(drop_cols), max_line_bytes, for_training=True)
    if eval_frame is not None and hasattr(X, "columns"):  # a table (arrays are not evaluated by column)
        _check_eval_columns(eval_frame, X, eval_data, label_col, _split_list(drop_cols))
    if tracked:
        _check_tracking(tracking_uri, register, "series" if series else "detector")
    provenance = None
    if augment is not None:
        from anomaly_ae.augment.command import augment_training_data

        synthetic, provenance = augment_training_data(X, augment, augment_rows, balance_col=balance_col, seed=seed)
        console.print(f"adding {provenance['rows_synthetic']} synthetic rows from a {provenance['generator']} "
                      f"generator to the training split (quality: {provenance['quality']}); the threshold is "
                      "calibrated on real rows only")
    else:
        synthetic = None
    kept = (f"the checkpoints in {checkpoint_dir} are kept: rerun with --resume to continue" if checkpoint_dir
            else "no model was saved")
    with clean_exit_on_signals(kept):
        if not series:
            detector.fit(X, synthetic=synthetic, checkpoint=checkpoint)
        else:
            detector.fit(X, checkpoint=checkpoint)
            stats = detector.alert_stats_
            per_day = f"{stats['alerts_per_day']:.2f} per day" if "alerts_per_day" in stats else \
                f"{stats['alerts_per_1000_steps']:.2f} per 1000 steps"
            console.print(f"window {detector.window_} steps; on held-out normal history the alert rule fired "
                          f"{stats['alerts']} times in {stats['held_out_steps']} steps ({per_day})")
    if provenance is not None:
        detector.training_metadata_["augmentation"] = provenance
    path = detector.save(out) if out is not None else None
    cal = detector.calibration_
    where = f"saved [bold]{model}[/] model to {path}" if path else f"trained [bold]{model}[/] model"
    console.print(f"{where} (threshold {cal.threshold:.6g}, "
                  f"validation FPR {cal.validation_fpr:.4f} for target {cal.target_fpr})")
    if tracked:
        from anomaly_ae.registry import log_training_run

        with kept_if_logging_fails(detector, path):
            run = log_training_run(detector, X, experiment=experiment or "anomaly-ae", register=register,
                                   tracking_uri=tracking_uri, model_dir=path, data_path=data, eval_data=eval_frame,
                                   # the model ignores its --drop-cols where the file has them: no need to name them
                                   label_col=label_col, drop_cols=())
        console.print(run.describe())
    if checkpoint is not None:  # the model is saved or logged: the checkpoints have served
        checkpoint.clear()


def _check_eval_columns(eval_frame: pd.DataFrame, X: pd.DataFrame, eval_data: Path, label_col: str,
                        drop_cols: list[str]) -> None:
    """--eval must score with the model about to be trained: checked before the training, not after it."""
    from anomaly_ae.exceptions import DataError

    given = [c for c in eval_frame.columns if c != label_col and c not in drop_cols]
    missing = [str(c) for c in X.columns if c not in given]
    extra = [str(c) for c in given if c not in X.columns]
    if missing or extra:
        problem = "; ".join(part for part in (missing and f"it lacks {', '.join(missing)}",
                                              extra and f"it has {', '.join(extra)}, which the training data has not")
                            if part)
        raise DataError(f"--eval {eval_data} does not have the training data's columns: {problem}; "
                        "give both files the same columns (--drop-cols applies to both)", reason="columns")


def _check_tracking(tracking_uri: str | None, register: str | None, kind: str) -> None:
    """Fail now, not after the training: an unreachable tracking server, or a --register name that holds
    another kind of model."""
    from anomaly_ae.registry import check_connection, check_registrable, quiet_mlflow_logs

    quiet_mlflow_logs()
    target = check_connection(tracking_uri)
    if register is not None:
        check_registrable(register, kind, target)


def _window(text: str | None) -> int | str | None:
    from anomaly_ae.exceptions import DataError

    if text is None or text == "auto":  # None: the model's own default
        return text
    try:
        return int(text)
    except ValueError:
        raise DataError(f"--window takes a number of steps or 'auto', got {text!r}") from None


@app.command()
@friendly_errors
def score(
    model: str = typer.Argument(..., help="Model directory or MLflow URI (models:/NAME@ALIAS)."),
    data: Path = typer.Argument(..., help="CSV or Parquet file to score."),
    output: Path = typer.Option(..., "--output", "-o", help="Output CSV or Parquet (written atomically; "
                                                              "replaces a file already there)."),
    top_k: int = typer.Option(3, min=0, help="Top contributing features per row (0 for none)."),
    chunk_rows: int = typer.Option(50_000, min=1, help="Rows per chunk: bounds memory on large files."),
    max_line_bytes: int = typer.Option(DEFAULT_MAX_LINE_BYTES, min=1,
                                       help="Longest CSV line accepted, in bytes (refuses files without newlines)."),
    keep_cols: Optional[str] = typer.Option(None, help="Comma-separated input columns to copy to the output."),
    engine: str = typer.Option("local", help="local (this process, in chunks) or spark (Parquet datasets, "
                                             "needs the 'spark' extra; writes a Parquet directory)."),
) -> None:
    """Score a file in chunks; writes score, p_value, is_anomaly, severity and top features per row."""
    from anomaly_ae.exceptions import DataError

    # the output replaces its path when complete: naming the input there would lose the input
    if output.resolve() == data.resolve() or (output.exists() and data.exists() and output.samefile(data)):
        raise DataError(f"--output {output} is the input file; write the scores to another path")
    if engine == "spark":
        from anomaly_ae.spark import score_parquet_with_spark

        summary = score_parquet_with_spark(model, data, output, top_k, keep_cols=_split_list(keep_cols))
        console.print(f"scored {summary.rows} rows, {summary.anomalies} flagged as anomalies -> {summary.output}")
        return
    if engine != "local":
        raise DataError(f"unknown --engine {engine!r}; choose local or spark")
    with clean_exit_on_signals():
        rows, flagged = _score_locally(model, data, output, top_k, chunk_rows, _split_list(keep_cols), max_line_bytes)
    console.print(f"scored {rows} rows, {flagged} flagged as anomalies -> {output}")


def _score_with_context(detector: Any, chunk: Any, context: Any, top_k: int,
                        alert_states: dict[Any, Any], anchors: dict[Any, int]) -> tuple[Any, Any]:
    """Score one chunk of a series file with the rows before it, so every row's window is the one a
    single pass would have seen; returns the chunk's rows and the context for the next chunk.
    `alert_states` holds each series' alert rule state from the chunks before (its last flags, and
    where the k-of-n held in the cooldown): the context rows are rescored for their windows only.
    `anchors` holds the grid anchor of each series new to the model, from its first row in the file
    (else a later chunk would anchor it at its first carried row, and jittered times round otherwise)."""
    import copy

    import numpy as np
    import pandas as pd

    from anomaly_ae.exceptions import DataError

    framing = copy.copy(detector.framing_)
    framing.origins_ns = {**anchors, **framing.origins_ns}
    offset = 0 if context is None else len(context)
    frame = chunk if context is None else pd.concat([context, chunk])  # the index: rows of the file
    try:
        metrics, layout = framing.split(frame.reset_index(drop=True))
        scored = detector.inference_.score(metrics, top_k=top_k, layout=layout)  # score_frame's path
    except DataError as exc:  # its rows count from the carried context's first row: say the file's
        raise _in_file_rows(exc, frame.index.to_numpy()) from None
    for name, origin in layout.origins_ns.items():
        anchors.setdefault(name, origin)
    result = scored.frame(top_k=top_k).iloc[offset:]
    result.index = chunk.index
    layout = scored.layout
    alerts = np.zeros(len(frame), dtype=bool)
    for rows in layout.order:
        state = alert_states.get(layout.series[rows[0]])
        if state is None:
            state = alert_states[layout.series[rows[0]]] = detector.alert_rule_.start()
        new = rows[rows >= offset]
        alerts[new] = [state.step(bool(flag)) for flag in scored.is_anomaly[new].tolist()]
    result["alert"] = alerts[offset:]
    # Carried: each series' rows on its last window - 1 grid steps, and up to max_gap steps before them
    # (a filled step repeats an earlier row); by steps, not rows, as several rows can share a step.
    reach = framing.window - 1 + framing.max_gap
    kept = [rows[layout.position[rows] >= layout.position[rows[-1]] - reach] for rows in layout.order]
    context = frame.iloc[np.sort(np.concatenate(kept))] if kept else frame.iloc[:0]
    return result, context


def _in_file_rows(exc: Any, file_rows: Any) -> Any:
    """The error with its row numbers (positions in a chunk and its carried context) as the file's."""
    import re

    mapping = {int(p): int(file_rows[p]) for p in exc.rows if 0 <= int(p) < len(file_rows)}

    def renumber(match: Any) -> str:
        return match.group(1) + re.sub(r"\d+", lambda n: str(mapping.get(int(n.group()), n.group())), match.group(2))

    message = re.sub(r"(\brows? \[?)(\d+(?:, \d+)*)", renumber, str(exc)) if mapping else str(exc)
    return type(exc)(message, column=exc.column, rows=[mapping.get(int(p), int(p)) for p in exc.rows],
                     reason=exc.reason)


def _text_columns(detector: Any) -> list[str]:
    """The columns a CSV read for `detector` keeps as text: its categorical columns and series ids."""
    framing = getattr(detector, "framing_", None)
    return [*detector.schema_.text_columns, *([framing.series_col] if framing is not None and framing.series_col
                                              else [])]


def _load_and_name(model: str) -> Any:
    """The model at a path or registry URI; for a URI, which version that is now (an alias moves)."""
    from anomaly_ae.detector import Detector
    from anomaly_ae.registry.store import is_remote

    if not is_remote(model):
        return Detector.load(model)
    from anomaly_ae.registry import load_model

    detector, ref = load_model(model)
    console.print(f"scoring with {ref.pinned_uri}" + (f" (@{ref.alias})" if ref.alias else ""))
    return detector


def _score_locally(model: str, data: Path, output: Path, top_k: int, chunk_rows: int,
                   keep: list[str], max_line_bytes: int) -> tuple[int, int]:
    import pandas as pd

    from anomaly_ae.data.io import AtomicTableWriter, iter_table_chunks
    from anomaly_ae.exceptions import DataError

    # The input is opened (header checked, first chunk read) before the model is loaded, so an
    # unusable file fails in a moment, without loading torch or downloading a model.
    chunks = iter_table_chunks(data, chunk_rows, max_line_bytes=max_line_bytes)
    detector = _load_and_name(model)
    # Pass-through columns that are not model features are set aside; any other extra column
    # is an error from the schema check rather than silently ignored.
    framing = getattr(detector, "framing_", None)
    own = [c for c in (framing.time_col, framing.series_col) if c] if framing is not None else []
    passthrough = [c for c in keep if c not in detector.schema_.names and c not in own]
    text = [*_text_columns(detector), *passthrough]
    if text:  # read again now that the model says which columns are text (passed through: copied as written)
        chunks.close()
        chunks = iter_table_chunks(data, chunk_rows, text_columns=text, max_line_bytes=max_line_bytes)
    rows = flagged = 0
    context = None  # series models: each series' rows on its last window - 1 steps, carried to the next chunk
    alert_states: dict = {}  # and each series' alert rule state
    anchors: dict = {}  # and the grid anchor of each series new to the model
    with AtomicTableWriter(output) as writer:
        for chunk in chunks:
            missing = [c for c in keep if c not in chunk.columns]
            if missing:
                raise DataError(f"--keep-cols names column(s) not in {data}: {', '.join(missing)}")
            absent = [c for c in own if c not in chunk.columns]
            if absent:  # before any other column complaint: it says what kind of input the model takes
                raise DataError(f"{model} is a series model, which reads {' and '.join(map(repr, own))}: {data} lacks "
                                f"{', '.join(map(repr, absent))}; send rows in time order with them")
            extra = [c for c in chunk.columns if c not in detector.schema_.names and c not in own and c not in keep
                     and c not in detector.schema_.ignored]
            # with a training column missing too, the schema's message says more (a near-match renamed)
            if extra and all(c in chunk.columns for c in detector.schema_.names):
                shown = ", ".join(map(str, extra[:10]))
                raise DataError(f"{data} has column(s) the model was not trained on: {shown}; name them in "
                                "--keep-cols to copy them to the output, or leave them out of the file")
            features = chunk.drop(columns=passthrough)
            if framing is None:
                result = detector.score_frame(features, top_k=top_k)
            else:
                result, context = _score_with_context(detector, features, context, top_k, alert_states, anchors)
            rows += len(result)
            flagged += int(result["is_anomaly"].sum())
            if keep:
                # a kept column named like an output column (e.g. a label "is_anomaly") keeps its data
                kept = chunk[keep].rename(columns=lambda c: f"input_{c}" if c in result.columns else c)
                result = pd.concat([kept, result], axis=1)
            writer.write(result)
    return rows, flagged


@app.command()
@friendly_errors
def evaluate(
    model: str = typer.Argument(..., help="Model directory or MLflow URI."),
    data: Path = typer.Argument(..., help="Labelled CSV or Parquet file (or normal rows with --synthetic-anomalies)."),
    label_col: Optional[str] = typer.Option(None, help="Column with 1 for anomalies, 0 for normal rows."),
    out_dir: Optional[Path] = typer.Option(None, help="Directory for the PNG plots and metrics.json."),
    drop_cols: Optional[str] = typer.Option(None, help="Other columns to ignore."),
    synthetic_anomalies: bool = typer.Option(False, help="No labels: perturb the (normal) rows in documented ways "
                                                         "and report the detection rate per kind."),
    n_per_kind: int = typer.Option(200, min=1, help="Synthetic anomalies per kind."),
) -> None:
    """AUROC, AUPRC, FPR and recall at the calibrated threshold, with plots; or, without labels,
    detection rates on synthetic anomalies."""
    from anomaly_ae.detector import Detector
    from anomaly_ae.data.io import make_directory, read_table
    from anomaly_ae.evaluation import evaluate_scores, plot_roc_pr, plot_score_histogram
    from anomaly_ae.exceptions import DataError

    if synthetic_anomalies == (label_col is not None):
        raise DataError("give either --label-col (labelled data) or --synthetic-anomalies (normal data), "
                        + ("not both" if synthetic_anomalies else "to say which the file holds"))
    if out_dir is not None:  # before the work, not after it
        if out_dir.exists() and not out_dir.is_dir():
            raise DataError(f"--out-dir {out_dir} is a file; give a directory (it is created if missing)")
        make_directory(out_dir, f"cannot create --out-dir {out_dir}")
    detector = Detector.load(model)
    frame = read_table(data, text_columns=_text_columns(detector))
    if synthetic_anomalies and getattr(detector, "framing_", None) is not None:
        raise DataError("--synthetic-anomalies perturbs single rows, so it applies to row models; for a series "
                        "model, pass a labelled series with --label-col")
    if synthetic_anomalies:
        from anomaly_ae.augment.command import synthetic_anomaly_report

        rates = synthetic_anomaly_report(detector, frame.drop(columns=_split_list(drop_cols)), n_per_kind=n_per_kind)
        Console().print(rates.to_string(index=False))
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            rates.to_csv(out_dir / "synthetic_anomalies.csv", index=False)
        return
    if label_col not in frame.columns:
        raise DataError(f"label column '{label_col}' is not in {data}; columns are {', '.join(frame.columns)}")
    labels = frame[label_col].to_numpy()
    X = frame.drop(columns=[label_col, *_split_list(drop_cols)])
    if getattr(detector, "framing_", None) is not None:
        _evaluate_series(detector, X, labels, out_dir)
        return
    schema = detector.schema_
    extra = [c for c in X.columns if c not in schema.names and c not in schema.ignored]
    if schema.image is None and extra and all(c in X.columns for c in schema.names):
        raise DataError(f"{data} has column(s) the model was not trained on: {', '.join(map(str, extra[:10]))}; "
                        "leave them out with --drop-cols")
    scores = detector.decision_function(X)
    report = evaluate_scores(scores, labels, detector.threshold_)
    table = Table(title=f"evaluation of {model} on {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.to_dict().items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_score_histogram(scores, detector.threshold_, out_dir / "score_histogram.png", labels=labels)
        plot_roc_pr(scores, labels, out_dir)
        (out_dir / "metrics.json").write_text(json.dumps(report.to_dict(), indent=1))
        console.print(f"plots and metrics.json written to {out_dir}")


# One PNG per series, for at most this many series (the first ones in the file).
MAX_SERIES_PLOTS = 20


def _evaluate_series(detector: Any, X: Any, labels: Any, out_dir: Path | None) -> None:
    """Row metrics plus event-level ones (per flagged step and per alert), one plot per series."""
    import numpy as np

    from anomaly_ae.evaluation import checked_labels, evaluate_scores, event_metrics, plot_series

    framing = detector.framing_
    labels = checked_labels(labels)
    result = detector.inference_.score(X)
    series = X[framing.series_col].astype(str).to_numpy() if framing.series_col else None
    if labels.any() and not labels.all():
        row_metrics: dict[str, Any] = evaluate_scores(result.scores, labels, detector.threshold_).to_dict()
    else:  # normal history alone: no AUROC, but how often it flags and alerts is what a team wants to know
        console.print("note: every row is labelled " + ("normal" if not labels.any() else "anomalous")
                      + "; AUROC and AUPRC need both kinds, so the rates and events alone are reported")
        row_metrics = {"n_rows": int(len(labels)), "n_anomalous": int(labels.sum()),
                       "threshold": float(detector.threshold_), "flagged_share": float(result.is_anomaly.mean()),
                       "alerts": int(result.alerts.sum())}
    metrics: dict[str, Any] = {"rows": row_metrics,
                               "events_by_flagged_step": event_metrics(result.is_anomaly, labels, series).to_dict(),
                               "events_by_alert": event_metrics(result.alerts, labels, series,
                                                                grace=detector.alert_rule_.within - 1).to_dict()}
    table = Table(title="series evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for group, values in metrics.items():
        for key, value in values.items():
            table.add_row(f"{group}.{key}", f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    if out_dir is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    names = detector.schema_.names
    numeric = [n for n in names if n in detector.preprocessor_.numeric]
    ids = series if series is not None else np.zeros(len(X), dtype=object)
    for i, name in enumerate(list(dict.fromkeys(ids.tolist()))[:MAX_SERIES_PLOTS]):
        rows = np.flatnonzero(ids == name)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)) if series is not None else "series"
        plot_series(X.iloc[rows][numeric].to_numpy(dtype=float), numeric, result.scores[rows], detector.threshold_,
                    labels[rows], out_dir / f"series_{i:03d}_{safe}.png", title=str(name))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    console.print(f"plots (one per series) and metrics.json written to {out_dir}")


@app.command()
@friendly_errors
def recalibrate(
    model: str = typer.Argument(..., help="Model directory or MLflow URI (models:/NAME@ALIAS)."),
    data: Path = typer.Argument(..., help="Normal data the model has not trained on (e.g. recent known-good "
                                          "traffic): CSV, Parquet, or .npy/.npz array."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to save the recalibrated model in."),
    target_fpr: Optional[float] = typer.Option(None, help="New false-positive rate target (default: the model's)."),
    drop_cols: Optional[str] = typer.Option(None, help="Comma-separated columns to ignore (ids, labels)."),
    max_line_bytes: int = typer.Option(DEFAULT_MAX_LINE_BYTES, min=1,
                                       help="Longest CSV line accepted, in bytes (refuses files without newlines)."),
) -> None:
    """Calibrate a model's threshold, p-values and severity again on new normal data, keeping the model."""
    import numpy as np

    from anomaly_ae.detector import Detector
    from anomaly_ae.persistence import check_writable

    check_writable(out)  # before the work, not after it
    detector = Detector.load(model)
    X = read_training_data(data, _split_list(drop_cols), max_line_bytes, _text_columns(detector))
    before = detector.threshold_
    detector.recalibrate(X, target_fpr=target_fpr)
    scores = detector.calibration_.reference_scores  # the rows that calibrated
    path = detector.save(out)
    console.print(f"recalibrated on {len(scores)} rows: threshold {before:.6g} -> {detector.threshold_:.6g} for "
                  f"target FPR {detector.target_fpr} (the old threshold flagged {np.mean(scores > before):.1%} of "
                  f"these rows); saved to {path}")


@app.command()
@friendly_errors
def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Option(..., "--version", help="Version to point the alias at."),
    alias: str = typer.Option("champion", help="Alias to set or move (e.g. champion, challenger)."),
    require_better_than: Optional[str] = typer.Option(
        None, help="Only promote if not worse than the version this alias names, e.g. champion (needs --eval)."),
    metric: str = typer.Option("auroc", help="Gate metric: auroc or auprc."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Labelled CSV/Parquet both versions are scored on."),
    label_col: Optional[str] = typer.Option(None, help="Label column of --eval (1 anomaly, 0 normal)."),
    drop_cols: Optional[str] = typer.Option(None, help="Other --eval columns to ignore."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI)."),
) -> None:
    """Point a registry alias at a version, optionally only if it scores no worse than the current one."""
    from anomaly_ae.exceptions import DataError
    from anomaly_ae.registry import promote as promote_version
    from anomaly_ae.registry import quiet_mlflow_logs

    gate = [option for option, given in (("--eval", eval_data), ("--label-col", label_col), ("--drop-cols", drop_cols),
                                         ("--metric", metric != "auroc")) if given]
    if gate and require_better_than is None:  # else the promotion would go ahead ungated, as if checked
        raise DataError(f"{', '.join(gate)} set the gate of --require-better-than ALIAS; give it too (e.g. "
                        "--require-better-than champion), or leave them out to promote without a comparison")
    quiet_mlflow_logs()
    result = promote_version(name, version, alias, require_better_than=require_better_than, metric=metric,
                             eval_data=eval_data, label_col=label_col, drop_cols=_split_list(drop_cols),
                             tracking_uri=tracking_uri)
    console.print(f"promoted: {result.describe()}")


models_app = typer.Typer(help="Models in the MLflow registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
@friendly_errors
def models_list(
    name: str = typer.Argument(..., help="Registered model name."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI)."),
) -> None:
    """Versions of a registered model, newest first, with aliases and key metrics."""
    from anomaly_ae.registry import list_versions
    from anomaly_ae.registry.store import KIND_TAG

    versions = list_versions(name, tracking_uri=tracking_uri)
    table = Table(title=f"models:/{name}")
    generators = any(v.metric(KIND_TAG) == "generator" for v in versions)
    keys = (("c2st_auc", "C2ST AUC"), ("precision", "precision"), ("recall", "recall"), ("coverage", "coverage"),
            ("quality_floors", "floors")) if generators else \
        (("score_type", "score"), ("threshold", "threshold"), ("validation_fpr", "val FPR"), ("auroc", "AUROC"),
         ("auprc", "AUPRC"))
    for column in ("version", "aliases", "created (UTC)", "model", *(title for _, title in keys), "run"):
        # a long text (the generators' failed quality floors) is cut, not every other column squeezed to nothing
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=40 if column == "floors" else None)
    for v in versions:
        table.add_row(v.version, ", ".join(f"@{a}" for a in v.aliases), v.created, v.metric("model_type"),
                      *(v.metric(key) for key, _ in keys), (v.run_id or "")[:12])
    out = Console()
    (out if out.is_terminal else Console(width=200)).print(table)


def _register_subcommands() -> None:
    from anomaly_ae.augment.command import generate_app
    from anomaly_ae.bench.command import benchmark
    from anomaly_ae.service.command import serve
    from anomaly_ae.watch.command import backtest, watch

    app.command("benchmark", help="Compare detectors with PyOD on ADBench (PROTOCOL.md splits).")(benchmark)
    app.command("serve")(serve)
    app.command("watch")(watch)
    app.command("backtest")(backtest)
    app.add_typer(generate_app, name="generate")


_register_subcommands()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """A warning the package raises for the user (an identifier-like column, ...) as one line, not as
    Python's file:line report."""
    text = str(message)
    if category is UserWarning:
        print(f"warning: {text}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)


def _print_version(value: bool) -> None:
    if value:
        from anomaly_ae.version import __version__

        print(f"anomaly-ae {__version__}")
        raise typer.Exit()


@app.callback()
def _setup(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                        help="Print the version and exit.")) -> None:
    """Anomaly detection with autoencoders trained on normal data."""
    warnings.showwarning = _show_warning


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
