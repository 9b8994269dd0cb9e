"""The run report: RUN_DIR/trials.csv, one self-contained RUN_DIR/report.html, RUN_DIR/pareto.png.

:func:`make_report` reads the run once (:class:`~rexsearch.results.RunResults`) and writes
the table, the page (plotly.js embedded once, no external reference, opens offline) and
the PNG. The search calls it at the end of every run; ``rexsearch report`` on demand.
Modules: ``analysis`` (groups, verdict, calibration, importances), ``figures`` (plotly and
matplotlib), ``html`` (the sections).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rexsearch.files import atomic_write, write_text_atomic
from rexsearch.report.analysis import Groups, verdict, verdict_tone
from rexsearch.report.figures import history_figure, pareto_png
from rexsearch.report.html import (
    calibration_section,
    confirmation_section,
    failures_section,
    html_page,
    importance_section,
    para,
    pareto_section,
    principles_section,
    profiles_section,
    section,
    summary_section,
)
from rexsearch.results import RunResults
from rexsearch.rundir import PARETO_PNG, REPORT_HTML, TRIALS_CSV, RunInfo

#: The page's sections: (id, title in the navigation bar).
NAV = (
    ("summary", "Run"),
    ("verdict", "Verdict"),
    ("confirmation", "Confirmation"),
    ("pareto", "Pareto fronts"),
    ("history", "History"),
    ("profiles", "Channel profiles"),
    ("principles", "Principles"),
    ("calibration", "Rank calibration"),
    ("importance", "Importances"),
    ("failures", "Failed trials"),
)


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`make_report` wrote, and the verdict line."""

    html: Path
    csv: Path
    png: Path
    verdict: str
    trials: int


#: The libraries the report imports on first use (about 3 s on 2 cores: scipy.stats alone ~1.8 s).
HEAVY_IMPORTS = (
    "scipy.stats",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "plotly.graph_objects",
    "plotly.subplots",
    "plotly.offline",
)


def prewarm() -> None:
    """Import :data:`HEAVY_IMPORTS` now, so a later :func:`make_report` does not wait for them.

    The search calls it from a background thread once its last trials run and a CPU is idle.
    """
    import importlib

    for name in HEAVY_IMPORTS:
        importlib.import_module(name)


def make_report(run: str | Path | RunInfo | RunResults) -> ReportFiles:
    """Write trials.csv, report.html and pareto.png into the run directory."""
    results = run if isinstance(run, RunResults) else RunResults.load(run)
    info = results.run
    g = Groups.of(results)
    csv_path = atomic_write(info.file(TRIALS_CSV), lambda tmp: results.table.to_csv(tmp, index=False))
    png_path = info.file(PARETO_PNG)
    pareto_png(g, info, png_path)

    line = verdict(g)
    sections = [
        summary_section(g),
        section("verdict", "Verdict", para(line, f"verdict {verdict_tone(g)}")),
        confirmation_section(g),
        pareto_section(g),
        section("history", "Optimisation history", history_figure(results.table, info)),
        profiles_section(g),
        principles_section(g),
        calibration_section(g),
        importance_section(g),
        failures_section(g),
    ]
    nav = " ".join(f'<a href="#{sid}">{label}</a>' for sid, label in NAV)
    on = f" on {info.dataset_title}" if info.dataset_title else " (rank only)"
    title = f"rexsearch report: {info.path.name}{on}"
    page = html_page(title, f"<nav>{nav}</nav>{''.join(sections)}")
    html_path = write_text_atomic(info.file(REPORT_HTML), page)
    return ReportFiles(html_path, csv_path, png_path, line, len(results.table))


def write_report(run: str | Path | RunInfo | RunResults) -> Path:
    """Write trials.csv, report.html and pareto.png; return the report's path."""
    return make_report(run).html


__all__ = ["ReportFiles", "make_report", "write_report"]
