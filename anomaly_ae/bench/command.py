"""``anomaly-ae benchmark``: the typer command (registered in the main CLI by ``cli.py``).

Register with ``app.command("benchmark")(benchmark)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def benchmark(
    data_dir: Path = typer.Option(Path("../shared/data/adbench"), "--data-dir",
                                  help="Folder of ADBench .npz files (keys X, y)."),
    out: Path = typer.Option(Path("benchmarks/results/adbench.csv"), "--out",
                             help="Result CSV; rows are appended and an interrupted run resumes."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated split seeds."),
    datasets: str = typer.Option("", "--datasets",
                                 help="Comma-separated dataset names (file names without .npz); "
                                      "empty = all files in --data-dir."),
    detectors: str = typer.Option("", "--detectors",
                                  help="Comma-separated, case-sensitive: anomaly_ae ae,dae,sae,vae,knn,"
                                       "aae,pca,default; PyOD IForest,KNN,LOF,LUNAR,OCSVM,ECOD,PCA,"
                                       "AutoEncoder,VAE,DeepSVDD. Empty = all available."),
    rerun: str = typer.Option("", "--rerun",
                              help="Detectors whose existing rows (for the selected datasets and "
                                   "seeds) are dropped and recomputed, e.g. after a default changed."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch / BLAS / OpenMP threads."),
    report: Optional[Path] = typer.Option(None, "--report",
                                          help="Markdown report written after the run; default: --out with .md."),
    fingerprints: Optional[Path] = typer.Option(
        None, "--fingerprints",
        help="protocol_fingerprint.json to check every split against; default: "
             "<data-dir>/../../bench/protocol_fingerprint.json when it exists."),
    anchor: Optional[Path] = typer.Option(
        None, "--anchor",
        help="PyOD anchor CSV to compare against in the report; default: "
             "<data-dir>/../../bench/pyod_anchor_dev.csv when it exists."),
    report_only: bool = typer.Option(False, "--report-only",
                                     help="Only (re)write the report from --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Benchmark anomaly_ae detectors against PyOD on ADBench (one-class protocol)."""
    from rich.console import Console
    from rich.markup import escape

    from .report import write_report
    from .runner import (BenchmarkError, default_anchor, default_fingerprints, parse_list,
                         parse_seeds, read_rows, run_benchmark)

    err = Console(stderr=True)

    def fail(msg: str) -> None:
        err.print(f"[red]error:[/] {escape(msg)}", highlight=False)
        raise typer.Exit(code=2)

    try:
        if out.is_dir():
            fail(f"--out {out} is a directory; name the result CSV, e.g. --out {out / 'adbench.csv'}")
        if not report_only:
            if not data_dir.is_dir():
                fail(f"data folder {data_dir} not found; point --data-dir at a folder of "
                     "ADBench .npz files")
            if fingerprints is not None and not fingerprints.exists():
                fail(f"fingerprint file {fingerprints} not found")
            fp = fingerprints if fingerprints is not None else default_fingerprints(data_dir)
            if fp is not None:
                err.print(f"checking splits against {fp}")
            run_benchmark(data_dir, out, seeds=parse_seeds(seeds),
                          datasets=parse_list(datasets) or None,
                          detectors=parse_list(detectors) or None, rerun=parse_list(rerun),
                          threads=threads, fingerprints=fp, progress=progress, console=err)
        if not out.exists():
            fail(f"no result file {out}")
        # a CSV this command did not write is refused here, naming the columns it needs
        if not read_rows(out):
            fail(f"{out} holds no results; run the benchmark without --report-only first")
        report = report if report is not None else out.with_suffix(".md")
        anc = anchor if anchor is not None else (default_anchor(data_dir) if data_dir.is_dir() else None)
        write_report(out, report, anc)
        err.print(f"results: {out}\nreport:  {report}")
    except BenchmarkError as e:
        fail(str(e))


__all__ = ["benchmark"]


def main() -> None:  # pragma: no cover - convenience: python -m anomaly_ae.bench.command
    app = typer.Typer(add_completion=False)
    app.command()(benchmark)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
