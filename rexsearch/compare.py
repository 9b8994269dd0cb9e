"""Design-space comparison (``rexsearch compare``): runs of different spaces at one budget.

Compared the way the paper's Table 3 / Fig. 2 and Radosavovic et al. (pycls) compare design
spaces: each run is a sample of its space (``--sampler random`` draws it without bias), so
its feasible searched trials (baselines left out) give the space's distribution of models.
Per run: the EDF of accuracy (and of rank), the mean accuracy of the top, middle and bottom
10% of its models and their mean channel profiles with ±1 std bands; between runs, the
two-sample Kolmogorov-Smirnov statistic with its p-value, and a verdict naming the space
that dominates (its EDF lies to the right and KS rejects equal distributions at 5%), or
saying that none does. Runs at different budgets, resolutions or fidelities are refused
unless ``force``; then the page says so. Runs are read through :class:`RunResults`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rexsearch.errors import UserError
from rexsearch.files import atomic_write, write_text_atomic
from rexsearch.results import METRICS, RunResults, record_config
from rexsearch.stats import KSResult, edf, ks_test, mean, quantile_groups, sample_std

COMPARE_HTML = "compare.html"
COMPARE_CSV = "compare.csv"
COMPARE_TRIALS_CSV = "compare_trials.csv"
#: Significance level of the KS test behind a "dominates" verdict.
ALPHA = 0.05
GROUPS = ("top", "middle", "bottom")


@dataclass(frozen=True)
class SpaceRun:
    """One run as a sample of its design space."""

    label: str
    results: RunResults

    @property
    def space(self) -> str:
        space = self.results.run.data.get("space")
        return str(space.get("name") or space.get("path")) if isinstance(space, dict) else str(space)

    @property
    def sampler(self) -> str:
        return str(self.results.run.sampler or "n/a")

    @cached_property
    def models(self) -> pd.DataFrame:
        """Feasible searched trials (no baselines), best first by the run's primary metric."""
        f = self.results.feasible
        searched = f[f["baseline"] == ""]
        return searched.sort_values([self.results.primary, "number"], ascending=[False, True])

    def values(self, metric: str) -> np.ndarray:
        return self.models[metric].dropna().to_numpy(dtype=float)

    def groups(self, metric: str) -> dict[str, np.ndarray]:
        """Trial numbers of the top, middle and bottom 10% by ``metric``."""
        m = self.models.dropna(subset=[metric])
        idx = quantile_groups(m[metric].to_numpy(dtype=float))
        return {k: m["number"].to_numpy()[v] for k, v in idx.items()}

    def profile(self, numbers: Sequence[int], depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of block output widths over the trials ``numbers``, each resampled to ``depth``
        blocks by relative position (exact when every config has ``depth`` blocks)."""
        by = {t.number: t for t in self.results.trials}
        rows = []
        for n in numbers:
            config = record_config(by[int(n)].user_attrs)
            if config is None:
                continue
            widths = np.asarray(config.out_channels, dtype=float)
            grid = np.linspace(0.0, 1.0, depth)
            rows.append(np.interp(grid, np.linspace(0.0, 1.0, len(widths)), widths))
        if not rows:
            return np.full(depth, np.nan), np.full(depth, np.nan)
        a = np.vstack(rows)
        return a.mean(axis=0), a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(depth)

    def depth(self) -> int:
        """The most common depth of the run's models."""
        depths = self.models["depth"].dropna().astype(int)
        return int(depths.mode().iloc[0]) if not depths.empty else 1


def _fidelity(results: RunResults) -> dict[str, Any]:
    f = results.run.fidelity
    return {
        "MACs budget": results.run.flops_budget,
        "params budget": results.run.params_budget,
        "latency budget (ms)": results.run.latency_budget_ms,
        "resolution": results.run.resolution,
        "objectives": ",".join(results.objectives),
        **{k: f.get(k) for k in ("epochs", "train_images", "val_images", "batch_size")},
    }


def mismatches(runs: Sequence[SpaceRun]) -> list[str]:
    """What differs between the runs' budgets, resolutions and fidelities (empty: comparable)."""
    first = _fidelity(runs[0].results)
    out = []
    for r in runs[1:]:
        other = _fidelity(r.results)
        for key, value in first.items():
            if other[key] != value:
                out.append(f"{key}: {runs[0].label} has {value}, {r.label} has {other[key]}")
    return out


@dataclass(frozen=True)
class Pair:
    """The KS comparison of two runs' distributions of ``metric``."""

    a: str
    b: str
    metric: str
    ks: KSResult
    median_a: float
    median_b: float

    @property
    def better(self) -> str | None:
        """The run whose EDF lies to the right when KS rejects equality at :data:`ALPHA`."""
        if not self.ks.pvalue < ALPHA or self.median_a == self.median_b:
            return None
        return self.a if self.median_a > self.median_b else self.b


@dataclass(frozen=True)
class Comparison:
    """Everything the comparison page and CSVs show."""

    runs: tuple[SpaceRun, ...]
    metric: str
    pairs: tuple[Pair, ...]
    forced: tuple[str, ...]

    @property
    def verdict(self) -> str:
        m = METRICS[self.metric]
        if any(len(r.values(self.metric)) < 2 for r in self.runs):
            return (
                "A run has fewer than two complete feasible searched trials; "
                f"no {self.metric} EDFs to compare."
            )
        for r in self.runs:
            wins = [p for p in self.pairs if r.label in (p.a, p.b) and p.better == r.label]
            if len(wins) == len(self.runs) - 1:
                tests = "; ".join(
                    f"vs {p.b if p.a == r.label else p.a}: KS D={p.ks.statistic:.3f}, p={p.ks.pvalue:.3g}"
                    for p in wins
                )
                return (
                    f"{r.label} ({r.space}) dominates: its {self.metric} EDF lies to the right of every "
                    f"other run's and the KS test rejects equal distributions at {ALPHA:g} ({tests}); median "
                    f"{m.format(np.median(r.values(self.metric)))}."
                )
        parts = [
            f"{p.a} vs {p.b}: KS D={p.ks.statistic:.3f}, p={p.ks.pvalue:.3g}"
            + (f" ({p.better} ahead)" if p.better else " (within noise)")
            for p in self.pairs
        ]
        return (
            f"No space dominates: the {self.metric} distributions are not separated at {ALPHA:g} for every "
            "pair (" + "; ".join(parts) + ")."
        )

    def summary(self) -> pd.DataFrame:
        """compare.csv: one row per run (Table 3 style: top, middle and bottom 10% mean)."""
        rows = []
        for r in self.runs:
            v = r.values(self.metric)
            groups = quantile_groups(v) if len(v) else {}
            row = {
                "run": r.label,
                "run_dir": str(r.results.run.path),
                "space": r.space,
                "sampler": r.sampler,
                "models": len(v),
                "metric": self.metric,
                "mean": mean(v),
                "std": sample_std(v),
                "median": float(np.median(v)) if len(v) else np.nan,
                "best": float(v.max()) if len(v) else np.nan,
                "dataset": (r.results.run.dataset or {}).get("dataset", ""),
            }
            for g in GROUPS:
                row[f"{g}10_mean"] = mean(v[groups[g]]) if groups else np.nan
            row.update(_fidelity(r.results))
            rows.append(row)
        return pd.DataFrame(rows)

    def trials(self) -> pd.DataFrame:
        """compare_trials.csv: every model of every run, with its 10% group (if any)."""
        frames = []
        for r in self.runs:
            m = r.models.copy()
            where = {int(n): g for g, ns in r.groups(self.metric).items() for n in ns}
            m.insert(0, "run", r.label)
            m.insert(1, "space", r.space)
            m["group10"] = [where.get(int(n), "") for n in m["number"]]
            frames.append(m)
        return pd.concat(frames, ignore_index=True)


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


def dataset_mismatches(runs: Sequence[SpaceRun]) -> list[str]:
    """Runs that trained on another data set (or another copy of it) than the first run."""
    from rexsearch.datasets import mismatch

    first = runs[0].results.run.dataset
    out = []
    for r in runs[1:]:
        diff = mismatch(first, r.results.run.dataset)
        if diff:
            out.append(f"{runs[0].label} trained on {diff} ({r.label})")
    return out


def compare_runs(run_dirs: Sequence[str | Path], force: bool = False) -> Comparison:
    """Load the runs and compare them; a UserError on fewer than two runs, on runs on different
    data sets (always), or on mismatched budgets/resolutions/fidelities unless ``force``."""
    if len(run_dirs) < 2:
        raise UserError("compare needs at least two run directories")
    loaded = [RunResults.load(d) for d in run_dirs]
    labels = _labels([r.run.path for r in loaded])
    if len(set(labels)) != len(labels):
        raise UserError("the same run directory is given twice")
    runs = tuple(SpaceRun(label, r) for label, r in zip(labels, loaded, strict=True))
    other_data = dataset_mismatches(runs)
    if other_data:
        raise UserError(
            "the runs trained on different data, so their accuracies are not comparable ("
            + "; ".join(other_data)
            + "); --force does not change that: compare runs on one data set"
        )
    diffs = mismatches(runs)
    if diffs and not force:
        raise UserError(
            "the runs differ in budget, resolution or fidelity, so their distributions are not comparable ("
            + "; ".join(diffs)
            + "); pass --force to compare them anyway"
        )
    metric = "accuracy" if all(r.results.primary == "accuracy" for r in runs) else "rank"
    pairs = tuple(
        Pair(
            a.label,
            b.label,
            metric,
            ks_test(a.values(metric), b.values(metric)),
            float(np.median(a.values(metric))) if len(a.values(metric)) else np.nan,
            float(np.median(b.values(metric))) if len(b.values(metric)) else np.nan,
        )
        for a, b in itertools.combinations(runs, 2)
    )
    return Comparison(runs, metric, pairs, tuple(diffs))


# ---------------------------------------------------------------------------- figures
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def edf_figure(c: Comparison, metric: str) -> Any:
    """One EDF step curve of ``metric`` per run."""
    import plotly.graph_objects as go

    m = METRICS[metric]
    scale = 100.0 if m.kind == "fraction" else 1.0
    fig = go.Figure()
    for i, r in enumerate(c.runs):
        x, y = edf(r.values(metric))
        fig.add_trace(
            go.Scatter(
                x=x * scale,
                y=y,
                mode="lines",
                line={"shape": "hv", "color": _COLOURS[i % len(_COLOURS)], "width": 2},
                name=f"{r.label} ({r.space}, n={len(x)})",
            )
        )
    unit = " (%)" if m.kind == "fraction" else ""
    fig.update_layout(
        title=f"EDF of {m.label}: fraction of models with {metric} at most x (further right is better)",
        xaxis_title=f"{m.label}{unit}",
        yaxis_title="fraction of models",
        yaxis_range=[0, 1.04],
        height=420,
    )
    return fig


def profiles_figure(c: Comparison) -> Any:
    """Per run: mean channel profile of its top, middle and bottom 10% models, ±1 std bands."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    colours = {"top": "#2ca02c", "middle": "#1f77b4", "bottom": "#d62728"}
    fig = make_subplots(rows=1, cols=len(c.runs), subplot_titles=[f"{r.label} ({r.space})" for r in c.runs])
    for col, r in enumerate(c.runs, start=1):
        depth = r.depth()
        x = list(range(1, depth + 1))
        for g, numbers in r.groups(c.metric).items():
            mu, sd = r.profile(numbers, depth)
            colour = colours[g]
            fig.add_trace(
                go.Scatter(
                    x=x + x[::-1],
                    y=list(mu + sd) + list((mu - sd)[::-1]),
                    fill="toself",
                    fillcolor=colour,
                    opacity=0.15,
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=mu,
                    mode="lines+markers",
                    line={"color": colour},
                    name=f"{g} 10% (n={len(numbers)})",
                    legendgroup=g,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="block", row=1, col=col)
    fig.update_yaxes(title_text="output channels", row=1, col=1)
    fig.update_layout(title="mean channel profiles of the top, middle and bottom 10% (±1 std)", height=440)
    return fig


# ---------------------------------------------------------------------------- the page
def write_comparison(c: Comparison, out: str | Path, force: bool = False) -> dict[str, Path]:
    """Write compare.html (self-contained), compare.csv and compare_trials.csv into ``out``."""

    from rexsearch.report.figures import figure_html
    from rexsearch.report.html import html_page, para, section, table

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    existing = [out / n for n in (COMPARE_HTML, COMPARE_CSV, COMPARE_TRIALS_CSV) if (out / n).exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} exists; choose another --out or pass --force to replace it")
    summary = c.summary()
    trials = c.trials()
    m = METRICS[c.metric]
    run_rows = [
        [
            r.label,
            r.space,
            r.sampler,
            str(r.results.run.path),
            "n/a" if r.results.run.flops_budget is None else f"{r.results.run.flops_budget:,}",
            "n/a" if r.results.run.params_budget is None else f"{r.results.run.params_budget:,}",
            "n/a" if r.results.run.latency_budget_ms is None else f"{r.results.run.latency_budget_ms:g}",
            str(r.results.run.resolution),
            r.results.run.dataset_title or "none (rank only)",
            ", ".join(f"{k} {v}" for k, v in r.results.run.fidelity.items()),
            str(len(r.models)),
        ]
        for r in c.runs
    ]
    notes = []
    if c.forced:
        notes.append(
            para("Compared with --force although the runs differ: " + "; ".join(c.forced) + ".", "note")
        )
    biased = [r.label for r in c.runs if r.sampler != "random"]
    if biased:
        notes.append(
            para(
                f"Not random-sampler runs: {', '.join(biased)}. A guided sampler concentrates on what it "
                "found good, so the run's EDF describes the search, not the space.",
                "note",
            )
        )
    quant_rows = [
        [
            r["run"],
            r["space"],
            str(r["models"]),
            m.format(r["top10_mean"]),
            m.format(r["middle10_mean"]),
            m.format(r["bottom10_mean"]),
            m.format(r["mean"]),
            "n/a"
            if pd.isna(r["std"])
            else (f"{100 * r['std']:.2f} points" if m.kind == "fraction" else f"{r['std']:.4f}"),
        ]
        for _, r in summary.iterrows()
    ]
    ks_rows = [
        [
            p.a,
            p.b,
            f"{p.ks.statistic:.3f}",
            f"{p.ks.pvalue:.3g}",
            m.format(p.median_a),
            m.format(p.median_b),
            p.better or "neither (within noise)",
        ]
        for p in c.pairs
    ]
    figures = [figure_html(edf_figure(c, c.metric), f"edf-{c.metric}")]
    if c.metric == "accuracy" and all(len(r.values("rank")) for r in c.runs):
        figures.append(figure_html(edf_figure(c, "rank"), "edf-rank"))
    sections = [
        section(
            "runs",
            "Runs",
            table(
                [
                    "run",
                    "space",
                    "sampler",
                    "directory",
                    "MACs budget",
                    "params budget",
                    "latency budget (ms)",
                    "resolution",
                    "data set",
                    "fidelity",
                    "models",
                ],
                run_rows,
            ),
            *notes,
        ),
        section("verdict", "Verdict", para(c.verdict, "verdict")),
        section(
            "edf",
            "EDFs",
            para(
                "Each run's feasible searched trials (baselines left out) as a sample of its space: the "
                "fraction of models at most x. A curve further right is a better space (Radosavovic et "
                "al.'s design-space comparison)."
            ),
            *figures,
        ),
        section(
            "quantiles",
            "Top, middle and bottom 10%",
            para(
                f"Mean {c.metric} of each run's top, middle (around the median) and bottom 10% of models, "
                "as in the paper's Table 3."
            ),
            table(
                ["run", "space", "models", "top 10%", "middle 10%", "bottom 10%", "mean", "std"], quant_rows
            ),
        ),
        section(
            "profiles",
            "Channel profiles",
            para("Mean output channels per block of each 10% group, ±1 std bands (the paper's Fig. 2)."),
            figure_html(profiles_figure(c), "profiles"),
        ),
        section(
            "ks",
            "Kolmogorov-Smirnov tests",
            para(
                f"scipy.stats.ks_2samp (two-sided) between the runs' {c.metric} distributions: D is the "
                f"largest gap between the two EDFs. A run is ahead when p < {ALPHA:g} and its median is "
                "higher."
            ),
            table(["run A", "run B", "KS D", "p", "median A", "median B", "ahead"], ks_rows),
        ),
    ]
    stand_in = list(dict.fromkeys(s for r in c.runs if (s := r.results.run.stand_in_data)))
    if stand_in:  # the same banner as the report's, first on the page
        sections.insert(0, "".join(para(text, "note") for text in stand_in))
    data = c.runs[0].results.run.dataset_title
    title = "rexsearch design-space comparison" + (f" on {data}" if data else "")
    page = html_page(title, "".join(sections), f"tables: {COMPARE_CSV}, {COMPARE_TRIALS_CSV}")
    # everything is computed before the first file is written: a failure leaves no half output
    out.mkdir(parents=True, exist_ok=True)
    csv = atomic_write(out / COMPARE_CSV, lambda tmp: summary.to_csv(tmp, index=False))
    trials_csv = atomic_write(out / COMPARE_TRIALS_CSV, lambda tmp: trials.to_csv(tmp, index=False))
    html = write_text_atomic(out / COMPARE_HTML, page)
    return {"html": html, "csv": csv, "trials_csv": trials_csv}


__all__ = ["Comparison", "Pair", "SpaceRun", "compare_runs", "edf_figure", "mismatches", "write_comparison"]
