"""`anomaly-ae generate ...` (a typer sub-app) and the two library calls the main CLI wires in:
`augment_training_data` (train --augment) and `synthetic_anomaly_report` (evaluate --synthetic-anomalies).

Register with ``app.add_typer(generate_app, name="generate")``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anomaly_ae.console import kept_if_logging_fails
from anomaly_ae.exceptions import AnomalyAEError, DataError

if TYPE_CHECKING:  # imported where used, so `anomaly-ae --help` does not load them
    import numpy as np
    import pandas as pd

generate_app = typer.Typer(help="Train generators of normal data, sample from them, measure them.",
                           no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console(stderr=True, soft_wrap=True)


# ---------------------------------------------------------------------- library calls
def balanced_allocation(counts: dict[str, int], rows: int) -> dict[str, int]:
    """Split `rows` synthetic rows over contexts so the final counts are as even as possible
    (water-filling: the rarest contexts are topped up first)."""
    labels = sorted(counts, key=lambda k: (counts[k], k))
    alloc = {k: 0 for k in labels}
    remaining = rows
    level = counts[labels[0]] if labels else 0
    while remaining > 0 and labels:
        below = [k for k in labels if counts[k] + alloc[k] <= level]
        higher = [counts[k] for k in labels if counts[k] > level]
        step = (min(higher) - level) if higher else None
        if step is None or step * len(below) > remaining:
            share, extra = divmod(remaining, len(below))
            for i, k in enumerate(below):
                alloc[k] += share + (1 if i < extra else 0)
            break
        for k in below:
            alloc[k] += step
        remaining -= step * len(below)
        level += step
    return {k: v for k, v in alloc.items() if v > 0}


def _like(synthetic: pd.DataFrame, X: pd.DataFrame) -> pd.DataFrame:
    """The generator's rows with X's column names and dtypes. A generator gives categories back as
    text ('False', '1'): each is mapped back to the training value it spells (astype would have made
    bool('False') True and the text '1' a NaN of an integer category)."""
    import pandas as pd

    out = {}
    for name, column in zip(X.columns, synthetic.columns):
        values, kind = synthetic[column], X[name].dtype
        if pd.api.types.is_numeric_dtype(kind) and not pd.api.types.is_bool_dtype(kind):
            out[name] = values.astype(kind, errors="ignore")
            continue
        spelled = {str(v): v for v in X[name].dropna().unique()}
        mapped = values.map(lambda v: spelled.get(str(v), v))
        if isinstance(kind, pd.CategoricalDtype):
            out[name] = pd.Categorical(mapped, categories=kind.categories, ordered=kind.ordered)
        else:
            out[name] = mapped.astype(kind, errors="ignore")
    return pd.DataFrame(out, columns=X.columns)


def augment_training_data(X: pd.DataFrame, generator: str, rows: int, balance_col: str | None = None,
                          seed: int = 0, save_to: str | Path | None = None,
                          **generator_params: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Synthetic normal rows for X and their provenance: pass them as `Detector.fit(X, synthetic=rows)`.

    `generator` is a kind to train on X now (cvae, gan, cgan), or an already trained one: a saved
    generator directory or a registry URI (``models:/NAME@ALIAS``). With `balance_col`, the
    generator is conditioned on that column and the synthetic rows go to its rarest values first,
    so the combined data is as balanced over it as `rows` allows. The provenance (JSON) names the
    generator, the SHA-256 of its saved form (and its registry version), its held-out quality and
    the row counts; store it in `Detector.training_metadata_`. `save_to` also saves the generator.
    """
    import numpy as np
    import pandas as pd

    from anomaly_ae.version import __version__
    from anomaly_ae.augment.generator import GENERATORS, Generator
    from anomaly_ae.augment.quality import check_floors, floor_verdict, summary

    if not isinstance(X, pd.DataFrame):
        raise DataError("augmentation works on tables (CSV/Parquet); for images use Generator.fit(X, y) directly")
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise DataError(f"--augment-rows must be a whole number >= 1, got {rows!r}")
    if balance_col is not None and balance_col not in X.columns:
        raise DataError(f"--balance-col '{balance_col}' is not a column of the data; columns are "
                        f"{', '.join(map(str, X.columns))}")
    source: dict[str, Any] = {}
    if generator in GENERATORS:
        if balance_col is not None and generator == "gan":
            raise DataError("balancing needs a conditional generator: use --augment cvae or cgan with --balance-col")
        if balance_col is None and generator == "cgan":
            raise DataError("--augment cgan needs --balance-col (the context to condition on); use gan without one")
        gen = Generator(model=generator, condition_cols=[balance_col] if balance_col else None, random_state=seed,
                        **generator_params).fit(X)
        source["trained_on"] = "this data"
    else:
        gen, source = _trained_generator(generator, X, balance_col)
    if balance_col is not None:
        labels = gen.conditions_.labels(gen.schema_.check(X)[0].reset_index(drop=True))[:, 0]
        counts = pd.Series(labels).value_counts().to_dict()
        allocation = balanced_allocation({str(k): int(v) for k, v in counts.items()}, int(rows))
        parts = [gen.sample(n, condition={balance_col: label}, random_state=seed + i)
                 for i, (label, n) in enumerate(sorted(allocation.items()))]
        synthetic = pd.concat(parts, ignore_index=True)
    else:
        allocation = {}
        synthetic = gen.sample(int(rows), random_state=seed)
    synthetic = _like(synthetic[list(map(str, X.columns))], X)
    if save_to is not None:
        gen.save(save_to)
    failures, verdict = check_floors(gen.quality_), floor_verdict(gen.quality_)
    if failures:  # its rows would teach the detector a normal that is not the data's
        warnings.warn(f"the generator misses its quality floors ({'; '.join(failures)}), so its rows may not look "
                      "like the normal data; train a better one (more epochs or rows) or augment less",
                      UserWarning, stacklevel=2)
    elif balance_col is not None and "not measured" in verdict:
        warnings.warn(f"the generator {verdict}, so the rows drawn for its rarest contexts "
                      "are unchecked; check them with `anomaly-ae generate report` on more held-out rows",
                      UserWarning, stacklevel=2)
    params = {k: v for k, v in gen.get_params().items() if k not in ("verbose", "device")}
    if params.get("condition_cols") is not None and not isinstance(params["condition_cols"], str):
        params["condition_cols"] = list(params["condition_cols"])
    provenance = {
        "generator": gen.model,
        "generator_sha256": gen.fingerprint_,
        **source,
        "generator_params": params,
        "anomaly_ae_version": __version__,
        "quality": summary(gen.quality_),
        "quality_floor_failures": failures,
        "rows_real": int(len(X)),
        "rows_synthetic": int(len(synthetic)),
        "calibrated_on": "real rows only",
        "balance_col": balance_col,
        "allocation": allocation,
        "seed": int(seed),
        "saved_to": None if save_to is None else str(save_to),
    }
    return synthetic, provenance


def _trained_generator(location: str, X: pd.DataFrame, balance_col: str | None) -> tuple[Any, dict[str, Any]]:
    """Load a saved or registered generator for augmentation and check it fits X."""
    from anomaly_ae.augment.generator import GENERATORS, Generator
    from anomaly_ae.persistence import REMOTE_SCHEMES

    remote = location.startswith(REMOTE_SCHEMES)
    if not remote and not Path(location).is_dir():
        raise DataError(f"--augment {location!r} is neither a generator kind ({', '.join(GENERATORS)}) nor a saved "
                        "generator directory or models:/NAME@ALIAS URI")
    source: dict[str, Any] = {"source": location}
    if remote:
        from anomaly_ae.registry import resolve_model

        ref = resolve_model(location)
        source.update({"registered_name": ref.name, "registered_version": ref.version})
        location = ref.pinned_uri  # load exactly the version that was resolved, even if the alias moves
    gen = Generator.load(location)
    if gen.schema_.image is not None:
        raise DataError(f"{source['source']} generates images; --augment needs a generator of table rows")
    if sorted(gen.schema_.names) != sorted(map(str, X.columns)):
        raise DataError(f"the generator {source['source']} was trained on columns {', '.join(gen.schema_.names)}, "
                        f"the training data has {', '.join(map(str, X.columns))}; use a generator trained on data "
                        "with the same columns")
    conditions = gen.conditions_.names
    if balance_col is not None and conditions[:1] != [balance_col]:
        raise DataError(f"--balance-col {balance_col!r} needs a generator conditioned on it; {source['source']} is "
                        f"conditioned on {', '.join(conditions) if conditions else 'nothing'}")
    return gen, source


def synthetic_anomaly_report(detector: Any, normal: pd.DataFrame | np.ndarray, n_per_kind: int = 200,
                             seed: int = 0) -> pd.DataFrame:
    """Detection rate at the detector's threshold for each kind of synthetic anomaly (perturb.KINDS),
    with unperturbed normal rows first as the baseline (their rate is the false-positive rate).

    The low-density kind decodes far-tail codes of the detector itself when it is a VAE/AAE;
    for other detectors a small VAE is trained on `normal` for it (a few seconds).
    """
    import numpy as np
    import pandas as pd

    from anomaly_ae.augment.generator import Generator
    from anomaly_ae.augment.perturb import KINDS, synthetic_anomalies
    from anomaly_ae.estimators import check_integer

    check_integer("n_per_kind", n_per_kind, 1)

    detector._check_fitted()
    checked, _ = detector.schema_.check(normal)
    if detector.model in ("vae", "aae"):
        latent_model = detector
    else:
        latent_model = Generator("cvae", epochs=100, patience=10, quality=False, random_state=seed).fit(checked)
    rng = np.random.default_rng(seed)
    baseline_idx = rng.integers(len(checked), size=n_per_kind)
    baseline = checked.iloc[baseline_idx] if isinstance(checked, pd.DataFrame) else checked[baseline_idx]
    sets = {"none": baseline, **synthetic_anomalies(checked, n_per_kind, seed + 1, schema=detector.schema_,
                                                     latent_model=latent_model)}
    descriptions = {"none": "unperturbed normal rows (the false-positive rate)", **KINDS}
    records = []
    for kind, rows in sets.items():
        scores = detector.decision_function(rows)
        flagged = scores > detector.threshold_
        records.append({"kind": kind, "n": int(len(scores)), "detected": int(flagged.sum()),
                        "detection_rate": float(flagged.mean()), "median_score": float(np.median(scores)),
                        "description": descriptions[kind]})
    return pd.DataFrame(records)


# ---------------------------------------------------------------------- the commands
def _friendly(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (AnomalyAEError, FileExistsError, ValueError) as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(code=2) from None
    return wrapper


def _read(path: Path, drop_cols: str | None) -> tuple[pd.DataFrame | np.ndarray, np.ndarray | None]:
    """Tables as DataFrames; .npz image arrays as (X, y or None); .npy as (X, None)."""
    import numpy as np

    from anomaly_ae.data.io import read_table

    drop = [c.strip() for c in (drop_cols or "").split(",") if c.strip()]
    if path.suffix in (".npy", ".npz"):
        if not path.exists():
            raise DataError(f"input file '{path}' does not exist")
        loaded = np.load(path, allow_pickle=False)
        if path.suffix == ".npy":
            return loaded, None
        if "X" not in loaded:
            raise DataError(f"{path} has no array named X (the images); it has {', '.join(loaded.files)}")
        return loaded["X"], (loaded["y"] if "y" in loaded else None)
    frame = read_table(path)
    unknown = [c for c in drop if c not in frame.columns]
    if unknown:
        raise DataError(f"--drop-cols names column(s) not in {path}: {', '.join(unknown)}")
    return frame.drop(columns=drop), None


def _parse_conditions(items: list[str] | None) -> dict[str, str] | None:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise DataError(f"--condition takes COLUMN=VALUE, got {item!r}")
        key, value = (part.strip() for part in item.split("=", 1))
        if not key:
            raise DataError(f"--condition takes COLUMN=VALUE, got {item!r} (no column name)")
        if key in out and out[key] != value:
            raise DataError(f"--condition gives column {key!r} twice ({out[key]!r} and {value!r}); a sample has one "
                            "value per column, so give each column once")
        out[key] = value
    return out or None


def _quality_table(title: str, reports: dict[str, dict[str, Any]]) -> Table:
    from anomaly_ae.augment.quality import QUALITY_FLOORS, summary

    table = Table(title=title)
    table.add_column("measure")
    for name in reports:
        table.add_column(name, justify="right")
    table.add_column("floor", justify="right")
    rows = [summary(r) for r in reports.values()]
    for key in rows[0] if rows else []:
        floor = QUALITY_FLOORS.get(key)
        table.add_row(key, *[_fmt(r.get(key)) for r in rows], f"{floor[0]} {floor[1]}" if floor else "")
    return table


def _condition_table(report: dict[str, Any]) -> Table | None:
    per = report.get("per_condition")
    if not per:
        return None
    table = Table(title="per condition (held-out real vs synthetic)")
    for col in ("condition", "n_real", "n_synthetic", "precision", "recall", "coverage"):
        table.add_column(col, justify="right" if col != "condition" else "left")
    for value, entry in per.items():
        table.add_row(value, *[_fmt(entry.get(k)) for k in ("n_real", "n_synthetic", "precision", "recall",
                                                              "coverage")])
    return table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


@generate_app.command("train")
@_friendly
def train_command(
    data: Path = typer.Argument(..., help="Normal data: CSV/Parquet, or .npz with X (images) and y (labels)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory to save the generator in "
                                                                 "(optional with --experiment/--register)."),
    model: str = typer.Option("cvae", help="cvae, gan or cgan."),
    condition_col: Optional[List[str]] = typer.Option(None, "--condition-col",
                                                      help="Context column to condition on (repeatable)."),
    drop_cols: Optional[str] = typer.Option(None, help="Comma-separated columns to ignore."),
    epochs: int = typer.Option(300, min=1, help="CVAE: maximum epochs (early stopping usually ends sooner)."),
    steps: int = typer.Option(2000, min=1, help="GAN: generator steps."),
    seed: int = typer.Option(0, min=0, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    experiment: Optional[str] = typer.Option(None, help="Log the run to this MLflow experiment."),
    register: Optional[str] = typer.Option(None, help="Register the generator as a new version of this MLflow model "
                                                      "(logs a run, in experiment 'anomaly-ae-generators' unless "
                                                      "--experiment)."),
    tracking_uri: Optional[str] = typer.Option(
        None, help="MLflow tracking URI; default MLFLOW_TRACKING_URI, else ./mlflow.db + ./mlartifacts."),
) -> None:
    """Train a generator of normal data, measure it on held-out rows; save it and/or log and register it."""
    import numpy as np

    from anomaly_ae.augment.generator import Generator
    from anomaly_ae.augment.quality import floor_verdict

    tracked = experiment is not None or register is not None
    if out is None and not tracked:
        raise DataError("say where the generator goes: --out DIR, and/or --experiment NAME / --register NAME "
                        "for MLflow")
    if out is not None:  # before the training, not after it
        from anomaly_ae.augment.persistence import FORMAT
        from anomaly_ae.persistence import check_writable

        check_writable(out, kind="generator", format_name=FORMAT)
    X, y = _read(data, drop_cols)
    if tracked:  # an unreachable tracking server fails now, not after the training
        from anomaly_ae.registry import check_connection, check_registrable, quiet_mlflow_logs

        quiet_mlflow_logs()
        target = check_connection(tracking_uri)
        if register is not None:  # a name that holds detectors is refused now, as train refuses it
            check_registrable(register, "generator", target)
    conditions = list(condition_col or []) or None
    if isinstance(X, np.ndarray) and y is not None and model != "gan" and not conditions:
        conditions = ["label"]
    gen = Generator(model=model, condition_cols=conditions, epochs=epochs, steps=steps, random_state=seed,
                    device=device, verbose=progress).fit(X, y)
    path = gen.save(out) if out is not None else None
    Console().print(_quality_table(f"{model} quality on held-out rows", {"held-out": gen.quality_}))
    table = _condition_table(gen.quality_)
    if table is not None:
        Console().print(table)
    where = f"saved [bold]{model}[/] generator to {path}" if path else f"trained [bold]{model}[/] generator"
    console.print(f"{where} (sha256 {gen.fingerprint_[:12]}); {escape(floor_verdict(gen.quality_))}")
    if tracked:
        from anomaly_ae.registry import log_generator_run

        with kept_if_logging_fails(gen, path):
            run = log_generator_run(gen, X, experiment=experiment or "anomaly-ae-generators", register=register,
                                    tracking_uri=tracking_uri, data_path=data)
        console.print(run.describe())


@generate_app.command("sample")
@_friendly
def sample_command(
    model: str = typer.Argument(..., help="Saved generator directory or MLflow URI (models:/NAME@ALIAS)."),
    n: int = typer.Option(1000, "-n", min=1, help="Number of rows (images) to draw; for a .png grid, spread "
                                                  "evenly over the condition's values (at least one each)."),
    condition: Optional[List[str]] = typer.Option(None, "--condition", help="COLUMN=VALUE (repeatable)."),
    output: Path = typer.Option(..., "--output", "-o",
                                help="CSV/Parquet for tables; .npz (X, y) or .png (a grid) for images."),
    seed: int = typer.Option(0, min=0, help="Random seed."),
) -> None:
    """Draw synthetic normal rows, optionally all in one context."""
    import numpy as np

    from anomaly_ae.augment.generator import Generator
    from anomaly_ae.augment.plots import save_sample_grid
    from anomaly_ae.data.io import write_table

    gen = Generator.load(model)
    cond = _parse_conditions(condition)
    drawn = n
    if gen.schema_.image is not None:
        if output.suffix == ".png":
            groups = 1 if cond else max(1, _n_values(gen))  # one row of the grid per condition value
            save_sample_grid(gen, output, n_per_condition=max(1, n // groups), condition=cond, random_state=seed)
            drawn = max(1, n // groups) * groups
        elif output.suffix == ".npz":
            images, labels = gen.sample(n, condition=cond, random_state=seed, return_conditions=True)
            output.parent.mkdir(parents=True, exist_ok=True)
            np.savez(output, X=images, y=np.asarray(labels, dtype=str))
        else:
            raise DataError(f"images are written as .npz or .png, not '{output.suffix}'")
    else:
        write_table(gen.sample(n, condition=cond, random_state=seed), output)
    # a numeric condition picks the training bucket that holds it: the rows are drawn in that context,
    # and the column's own values are generated, so they spread over and around the bucket
    buckets = gen.conditions_.resolve(cond) if cond else {}
    described = [f"{k}={v}" if buckets[k] == str(v) else f"{k} in its training bucket {buckets[k]} (holding {v}; "
                 "the values themselves are generated)" for k, v in (cond or {}).items()]
    console.print(f"drew {drawn} {'images' if gen.schema_.image is not None else 'rows'}"
                  f"{' with ' + ', '.join(described) if described else ''} -> {output}")


def _n_values(gen: Any) -> int:
    cols = gen.conditions_.columns
    return len(cols[0]["values"]) if cols else 1


@generate_app.command("report")
@_friendly
def report_command(
    model: str = typer.Argument(..., help="Saved generator directory or MLflow URI (models:/NAME@ALIAS)."),
    data: Path = typer.Argument(..., help="Real rows the generator did not see (CSV/Parquet, or .npz X, y)."),
    drop_cols: Optional[str] = typer.Option(None, help="Comma-separated columns to ignore."),
    seed: int = typer.Option(0, min=0, help="Random seed."),
) -> None:
    """Quality against real held-out data, beside the quality logged when it was trained."""
    from anomaly_ae.augment.generator import Generator
    from anomaly_ae.augment.quality import floor_verdict

    gen = Generator.load(model)
    X, y = _read(data, drop_cols)
    report = gen.evaluate(X, y, random_state=seed)
    Console().print(_quality_table(f"{gen.model} generator {model}", {"at training": gen.quality_,
                                                                       str(data.name): report}))
    table = _condition_table(report)
    if table is not None:
        Console().print(table)
    console.print(escape(floor_verdict(report)))
