"""Inspecting a run: a table (trials.csv), one self-contained HTML report, a PNG, the dashboard.

:func:`trials_frame` turns the Optuna study into one row per trial; :func:`write_report`
writes RUN_DIR/trials.csv, RUN_DIR/report.html (plotly.js embedded once, no external
reference, opens offline) and RUN_DIR/pareto.png. The search calls :func:`write_report`
at the end of every run; ``rexsearch report`` calls it again on demand.
:func:`dashboard_server` serves optuna-dashboard on the run's storage.
"""

from __future__ import annotations

import datetime as _dt
import errno
import html
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
import pandas as pd

from rexsearch import __version__
from rexsearch.config import ReXNetConfig
from rexsearch.cost import count_cost
from rexsearch.errors import UserError
from rexsearch.rundir import RunInfo, load_run
from rexsearch.storage import mask_passwords

TRIALS_CSV = "trials.csv"
REPORT_HTML = "report.html"
PARETO_PNG = "pareto.png"

#: Fewest complete searched trials for which parameter importances are computed.
MIN_IMPORTANCE_TRIALS = 5
#: How many top searched configs the channel-profile section draws.
TOP_PROFILES = 5

MACS_CONVENTION = (
    "MACs are multiply-accumulates of conv and linear layers at {r}x{r}, batch 1, eval mode "
    "(what the ReXNet paper, timm and most mobile-CNN papers call FLOPs); fvcore's total adds "
    "BatchNorm (2 per element) and pooling."
)

_INT_COLUMNS = ("macs", "params", "proxy_macs", "fvcore_macs", "fvcore_total", "expand_layers", "depth")
_STYLE = {
    "searched": {"color": "#1f77b4", "symbol": "circle"},
    "front": {"color": "#d62728", "symbol": "circle-open"},
    "baseline": {"color": "#ff7f0e", "symbol": "star"},
    "pruned": {"color": "#8c8c8c", "symbol": "x"},
    "infeasible": {"color": "#9467bd", "symbol": "diamond-open"},
}


# ---------------------------------------------------------------------------- the table
def _config_of(attrs: dict[str, Any]) -> ReXNetConfig | None:
    try:
        return ReXNetConfig.from_dict(attrs["config"])
    except (KeyError, UserError, TypeError):
        return None


def growth_slope(config: ReXNetConfig) -> float:
    """Least-squares slope of the block output widths over the block index (channels per block)."""
    widths = np.asarray(config.out_channels, dtype=float)
    if len(widths) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(widths)), widths, 1)[0])


def nonlinearity(config: ReXNetConfig) -> str:
    """The nonlinearity after the expand convs (``mixed`` when blocks differ)."""
    names = {config.block_activation(b) for b in config.blocks if b.expansion != 1}
    if not names:
        return config.activation
    return names.pop() if len(names) == 1 else "mixed"


def se_summary(config: ReXNetConfig) -> str:
    """Which blocks use squeeze-excitation: ``none``, ``all, r=12`` or ``13/16, r=12``."""
    n = sum(b.se for b in config.blocks)
    if n == 0:
        return "none"
    which = "all" if n == config.depth else f"{n}/{config.depth}"
    return f"{which}, r={config.se_ratio}"


def _feasible(trial: Any, attrs: dict[str, Any], info: RunInfo) -> bool | None:
    constraints = trial.system_attrs.get("constraints")
    if constraints is None and getattr(trial, "constraints", None):
        constraints = list(trial.constraints.values())
    if constraints is not None:
        return all(c <= 0 for c in constraints)
    if attrs.get("macs") is None:
        return None
    params_ok = info.params_budget is None or attrs.get("params", 0) <= info.params_budget
    return attrs["macs"] <= info.flops_budget and params_ok


def _trial_row(trial: Any, info: RunInfo) -> dict[str, Any]:
    attrs = trial.user_attrs
    objectives = info.objectives
    row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
    values = trial.values or [None] * len(objectives)
    for name, value in zip(objectives, values, strict=False):
        row[f"value_{name}"] = value
    for name, value in trial.params.items():
        row[f"param_{name}"] = value
    config = _config_of(attrs)
    curve = attrs.get("accuracy_curve") or []
    accuracy = row.get("value_accuracy")
    if accuracy is None and curve:
        accuracy = curve[-1]
    if accuracy is None:
        accuracy = attrs.get("accuracy")
    rank = attrs.get("rank", row.get("value_rank"))
    row.update(
        {
            "config_hash": attrs.get("config_hash") or (config.short_hash() if config else None),
            "macs": attrs.get("macs"),
            "params": attrs.get("params"),
            "proxy_macs": attrs.get("proxy_macs"),
            "fvcore_macs": attrs.get("fvcore_macs"),
            "fvcore_total": count_cost(config, info.resolution).fvcore_total if config else None,
            "rank": rank,
            "nuclear_norm": attrs.get("nuclear_norm"),
            "accuracy": accuracy,
            "expand_layers": config.expand_layers if config else None,
            "slope": growth_slope(config) if config else None,
            "nonlinearity": nonlinearity(config) if config else None,
            "se": se_summary(config) if config else None,
            "depth": config.depth if config else None,
            "baseline": attrs.get("baseline") or "",
            "feasible": _feasible(trial, attrs, info),
            "error": attrs.get("error") or "",
            "train_seconds": attrs.get("train_seconds"),
        }
    )
    return row


def trials_frame(run_info: RunInfo) -> pd.DataFrame:
    """One row per trial: number, state, ``value_<objective>``, ``param_<name>``, costs, metrics,
    design summary (expand layers, growth slope, nonlinearity, SE), baseline, feasible, error."""
    return _frame(run_info, run_info.open_study().get_trials(deepcopy=False))


def _frame(info: RunInfo, trials: Sequence[Any]) -> pd.DataFrame:
    rows = [_trial_row(t, info) for t in trials]
    lead = ["number", "state"] + [f"value_{o}" for o in info.objectives]
    param_cols = sorted({k for r in rows for k in r if k.startswith("param_")})
    rest = [
        "config_hash",
        "macs",
        "params",
        "proxy_macs",
        "fvcore_macs",
        "fvcore_total",
        "rank",
        "nuclear_norm",
        "accuracy",
        "expand_layers",
        "slope",
        "nonlinearity",
        "se",
        "depth",
        "baseline",
        "feasible",
        "error",
        "train_seconds",
    ]
    frame = pd.DataFrame(rows, columns=lead + param_cols + rest)
    for col in _INT_COLUMNS:
        frame[col] = pd.array([None if pd.isna(v) else int(v) for v in frame[col]], dtype="Int64")
    frame["feasible"] = pd.array(list(frame["feasible"]), dtype="boolean")
    numeric = ["rank", "nuclear_norm", "accuracy", "slope", "train_seconds"]
    for col in numeric + [f"value_{o}" for o in info.objectives]:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame


# ---------------------------------------------------------------------------- analysis
def pareto_mask(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` (one column per objective)."""
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return np.zeros(len(pts), dtype=bool)
    signs = np.array([1.0 if m else -1.0 for m in maximize])
    p = pts * signs
    mask = np.ones(len(p), dtype=bool)
    for i in range(len(p)):
        dominated = np.all(p >= p[i], axis=1) & np.any(p > p[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def front_objectives(info: RunInfo) -> tuple[list[str], list[bool]]:
    """Columns (and whether each is maximised) that define the run's Pareto front.

    The study's objectives when there are several; a single objective is paired with MACs
    (fewer is better), so the front is not a single point.
    """
    if len(info.objectives) > 1:
        return list(info.objectives), [True] * len(info.objectives)
    return [info.objectives[0], "macs"], [True, False]


def feasible_front(feasible: pd.DataFrame, info: RunInfo) -> pd.DataFrame:
    """The rows of ``feasible`` (complete, feasible trials) on the run's Pareto front."""
    keys, maximize = front_objectives(info)
    pool = feasible.dropna(subset=keys)
    if pool.empty:
        return pool
    return pool[pareto_mask(pool[keys].to_numpy(dtype=float), maximize)]


def primary_metric(info: RunInfo) -> str:
    """``accuracy`` when the run measured it, else ``rank`` (a rank-only run)."""
    return "accuracy" if "accuracy" in info.objectives else "rank"


@dataclass(frozen=True)
class _Groups:
    """The trials split the way every plot and table of the report uses them."""

    metric: str
    complete: pd.DataFrame
    feasible: pd.DataFrame
    searched: pd.DataFrame
    baselines: pd.DataFrame
    pruned: pd.DataFrame
    infeasible: pd.DataFrame
    failed: pd.DataFrame

    @classmethod
    def of(cls, frame: pd.DataFrame, metric: str) -> _Groups:
        complete = frame[(frame["state"] == "COMPLETE") & frame[metric].notna()]
        feasible = complete[complete["feasible"].fillna(True).astype(bool)]
        return cls(
            metric=metric,
            complete=complete,
            feasible=feasible,
            searched=feasible[feasible["baseline"] == ""],
            baselines=complete[complete["baseline"] != ""],
            pruned=frame[(frame["state"] == "PRUNED") & frame[metric].notna()],
            infeasible=complete[~complete["feasible"].fillna(True).astype(bool)],
            failed=frame[frame["state"] == "FAIL"],
        )

    def best_searched(self) -> pd.Series | None:
        if self.searched.empty:
            return None
        ordered = self.searched.sort_values([self.metric, "macs"], ascending=[False, True])
        return ordered.iloc[0]


def _is_false(value: Any) -> bool:
    return not pd.isna(value) and not bool(value)


def _fmt_metric(metric: str, value: float) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4f}"


def _fmt_diff(metric: str, diff: float) -> str:
    return f"{100 * diff:+.2f} points" if metric == "accuracy" else f"{diff:+.4f} rank"


def _fmt_macs(macs: Any) -> str:
    return "n/a" if macs is None or pd.isna(macs) else f"{macs / 1e6:.1f}M"


def verdict(frame: pd.DataFrame, info: RunInfo) -> str:
    """One sentence: did the best searched config beat the baselines at the run's budget."""
    metric = primary_metric(info)
    g = _Groups.of(frame, metric)
    budget = _fmt_macs(info.flops_budget)
    best = g.best_searched()
    if best is None:
        return f"No searched trial completed within the {budget} MACs budget; nothing to compare."
    head = (
        f"The best searched config (trial #{best['number']}, {metric} {_fmt_metric(metric, best[metric])}, "
        f"{_fmt_macs(best['macs'])} MACs)"
    )
    expected = frame.loc[frame["baseline"] != "", "baseline"].tolist()
    if not expected:
        return f"{head}; the run has no baseline trials to compare with."
    parts, wins = [], 0
    for name in expected:
        rows = g.baselines[g.baselines["baseline"] == name]
        if rows.empty:
            parts.append(f"{name} did not complete")
            continue
        b = rows.iloc[0]
        diff = float(best[metric] - b[metric])
        wins += diff > 0
        note = ", over the budget" if _is_false(b["feasible"]) else ""
        parts.append(f"{_fmt_diff(metric, diff)} over {name} ({_fmt_metric(metric, b[metric])}{note})")
    compared = len(g.baselines)
    if compared and wins == compared:
        outcome = "beats every baseline" if compared > 1 else "beats the baseline"
    elif wins:
        outcome = f"beats {wins} of {compared} baselines"
    else:
        outcome = "does not beat the baselines"
    return f"{head} {outcome} at the {budget} MACs budget: " + "; ".join(parts) + "."


def _correlations(df: pd.DataFrame, target: str, predictors: Sequence[str]) -> list[dict[str, Any]]:
    from scipy import stats

    out = []
    for name in predictors:
        pair = df[[name, target]].dropna()
        row: dict[str, Any] = {"predictor": name, "n": len(pair)}
        if len(pair) >= 3 and pair[name].nunique() > 1 and pair[target].nunique() > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tau = stats.kendalltau(pair[name], pair[target])
                rho = stats.spearmanr(pair[name], pair[target])
            row.update(tau=float(tau.statistic), tau_p=float(tau.pvalue))
            row.update(rho=float(rho.statistic), rho_p=float(rho.pvalue))
        out.append(row)
    return out


def _importances(study: Any, searched_numbers: set[int], objectives: Sequence[str]) -> dict[str, Any]:
    """Per objective: {param: importance} or an explanatory string."""
    import optuna

    trials = [t for t in study.get_trials(deepcopy=False) if t.number in searched_numbers]
    if len(trials) < MIN_IMPORTANCE_TRIALS:
        reason = f"needs at least {MIN_IMPORTANCE_TRIALS} complete searched trials, the run has {len(trials)}"
        return dict.fromkeys(objectives, reason)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        sub = optuna.create_study(directions=["maximize"] * len(objectives))
    finally:
        optuna.logging.set_verbosity(verbosity)
    sub.add_trials(trials)
    # PED-ANOVA: what sets the top-quantile trials apart; at least ~5 trials in that quantile.
    quantile = min(0.5, max(0.1, 5 / len(trials)))
    out: dict[str, Any] = {}
    for i, name in enumerate(objectives):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = optuna.importance.get_param_importances(
                    sub,
                    evaluator=optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile),
                    target=lambda t, i=i: -t.values[i],  # PED-ANOVA treats lower as better
                )
        except Exception as exc:  # importance is optional: report why it is missing
            out[name] = f"could not be computed ({type(exc).__name__}: {exc})"
    return out


# ---------------------------------------------------------------------------- figures
def _hover(df: pd.DataFrame, metric: str) -> list[str]:
    return [
        f"#{r.number} {r.baseline or ''}<br>{metric} {_fmt_metric(metric, getattr(r, metric))}"
        f"<br>MACs {_fmt_macs(r.macs)}<br>config {r.config_hash}"
        for r in df.itertuples()
    ]


def _add_groups(fig: Any, g: _Groups, x: str, y: str, maximize_x: bool, xscale: float) -> None:
    import plotly.graph_objects as go

    def trace(df: pd.DataFrame, name: str, style: str, size: int = 8, **kw: Any) -> None:
        if df.empty:
            return
        s = _STYLE[style]
        fig.add_trace(
            go.Scatter(
                x=df[x].astype(float) / xscale,
                y=df[y],
                name=name,
                hovertext=_hover(df, g.metric),
                hoverinfo="text",
                marker={"color": s["color"], "symbol": s["symbol"], "size": size},
                **{"mode": "markers", **kw},
            )
        )

    trace(g.searched, "searched", "searched")
    pool = g.feasible.dropna(subset=[x, y])
    if not pool.empty:
        front = pool[pareto_mask(pool[[y, x]].to_numpy(dtype=float), [True, maximize_x])].sort_values(x)
        trace(front, "Pareto front", "front", size=14, mode="lines+markers", line={"color": "#d62728"})
    trace(
        g.baselines,
        "baselines",
        "baseline",
        size=16,
        mode="markers+text",
        text=g.baselines["baseline"],
        textposition="top center",
    )
    trace(g.pruned.dropna(subset=[x]), "pruned (last epoch)", "pruned")
    trace(g.infeasible, "infeasible", "infeasible", size=10)


def _figure_html(fig: Any, name: str) -> str:
    fig.update_layout(template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=f"fig-{name}", config={"displaylogo": False}
    )


def _macs_window(g: _Groups, info: RunInfo) -> tuple[tuple[float, float] | None, str]:
    """An x range around the feasible trials and the budget, when infeasible outliers would squash it."""
    inside = pd.concat([g.feasible["macs"], g.pruned["macs"]]).dropna()
    outliers = g.infeasible["macs"].dropna()
    if inside.empty or outliers.empty:
        return None, ""
    lo, hi = float(inside.min()), max(float(inside.max()), float(info.flops_budget))
    pad = max(0.1 * (hi - lo), 0.005 * info.flops_budget)
    beyond = outliers[outliers > hi + pad]
    if beyond.empty:
        return None, ""
    n = len(beyond)
    note = f"{n} infeasible trial{'s' if n > 1 else ''} off the right edge (up to {_fmt_macs(beyond.max())})"
    return (lo - pad, hi + pad), note


def _pareto_figures(g: _Groups, info: RunInfo) -> list[str]:
    import plotly.graph_objects as go

    metric = g.metric
    label = "proxy accuracy" if metric == "accuracy" else "normalized feature rank"
    fig = go.Figure()
    _add_groups(fig, g, "macs", metric, maximize_x=False, xscale=1e6)
    fig.add_vline(x=info.flops_budget / 1e6, line_dash="dash", line_color="#555", annotation_text="budget")
    window, note = _macs_window(g, info)
    if window is not None:
        fig.update_xaxes(range=[window[0] / 1e6, window[1] / 1e6])
        fig.add_annotation(text=note, xref="paper", yref="paper", x=1, y=0, showarrow=False, yshift=8)
    fig.update_layout(
        title=f"{label} vs MACs (front: more {metric}, fewer MACs)",
        xaxis_title=f"MACs (millions, conv+linear at {info.resolution}x{info.resolution})",
        yaxis_title=label,
        height=480,
    )
    out = [_figure_html(fig, "pareto-macs")]
    fig = go.Figure()
    if metric == "accuracy" and "rank" in info.objectives:
        _add_groups(fig, g, "rank", metric, maximize_x=True, xscale=1.0)
        title, xtitle = "proxy accuracy vs feature rank (the study's Pareto front)", "normalized feature rank"
    elif metric == "accuracy":
        _add_groups(fig, g, "rank", metric, maximize_x=True, xscale=1.0)
        title, xtitle = "proxy accuracy vs feature rank (front: both higher)", "normalized feature rank"
    else:
        _add_groups(fig, g, "params", metric, maximize_x=False, xscale=1e6)
        title, xtitle = (
            "feature rank vs parameters (rank-only run; front: more rank, fewer params)",
            ("parameters (millions)"),
        )
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=label, height=480)
    out.append(_figure_html(fig, "pareto-rank"))
    return out


def _history_figure(frame: pd.DataFrame, info: RunInfo) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    objectives = info.objectives
    fig = make_subplots(rows=len(objectives), cols=1, shared_xaxes=True, subplot_titles=objectives)
    for i, name in enumerate(objectives, start=1):
        col = name if name in frame else f"value_{name}"
        first = i == 1
        done = frame[(frame["state"] == "COMPLETE") & frame[col].notna()]
        ok = done[done["feasible"].fillna(True).astype(bool)]
        for label, df, style in (
            ("complete", ok, "searched"),
            ("infeasible", done[~done["feasible"].fillna(True).astype(bool)], "infeasible"),
            ("pruned (last epoch)", frame[(frame["state"] == "PRUNED") & frame[col].notna()], "pruned"),
        ):
            if df.empty:
                continue
            s = _STYLE[style]
            fig.add_trace(
                go.Scatter(
                    x=df["number"],
                    y=df[col],
                    mode="markers",
                    name=label,
                    legendgroup=label,
                    showlegend=first,
                    marker={"color": s["color"], "symbol": s["symbol"], "size": 8},
                ),
                row=i,
                col=1,
            )
        if not ok.empty:
            best = ok.sort_values("number")[col].cummax()
            fig.add_trace(
                go.Scatter(
                    x=ok.sort_values("number")["number"],
                    y=best,
                    mode="lines",
                    line={"shape": "hv", "color": "#d62728"},
                    name="best so far (feasible)",
                    legendgroup="best",
                    showlegend=first,
                ),
                row=i,
                col=1,
            )
        fig.update_yaxes(title_text=name, row=i, col=1)
    fig.update_xaxes(title_text="trial number", row=len(objectives), col=1)
    fig.update_layout(title="optimisation history", height=300 * len(objectives) + 80)
    return _figure_html(fig, "history")


def _profile_configs(g: _Groups, configs: dict[int, ReXNetConfig]) -> list[tuple[str, Any, bool]]:
    top = g.searched.sort_values([g.metric, "macs"], ascending=[False, True]).head(TOP_PROFILES)
    out = []
    for r in top.itertuples():
        if r.number in configs:
            label = f"#{r.number} ({_fmt_metric(g.metric, getattr(r, g.metric))})"
            out.append((label, r, False))
    for r in g.baselines.itertuples():
        if r.number in configs:
            out.append((f"{r.baseline} ({_fmt_metric(g.metric, getattr(r, g.metric))})", r, True))
    return out


def _profiles_figure(profiles: list[tuple[str, Any, bool]], configs: dict[int, ReXNetConfig]) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, r, is_baseline in profiles:
        widths = configs[r.number].out_channels
        fig.add_trace(
            go.Scatter(
                x=list(range(len(widths))),
                y=widths,
                mode="lines+markers",
                name=label,
                line={"dash": "dash", "width": 3} if is_baseline else {"width": 2},
            )
        )
    fig.update_layout(
        title="output channels per block: top searched configs (solid) vs baselines (dashed)",
        xaxis_title="block index",
        yaxis_title="output channels",
        height=460,
    )
    return _figure_html(fig, "profiles")


def _choice_groups(series: pd.Series) -> pd.Series:
    """Design choices as groups: categories as they are, numbers in at most three bins."""
    if not pd.api.types.is_numeric_dtype(series) or series.nunique() <= 5:
        return series.map(lambda v: f"{v:.1f}" if isinstance(v, float) else str(v))
    bins = pd.qcut(series, 3, duplicates="drop")
    return bins.map(lambda iv: f"{iv.left:.1f} to {iv.right:.1f}").astype(str)


PRINCIPLES = (
    ("expand_layers", "number of expand layers (blocks that widen the channels)"),
    ("slope", "channel growth slope (least-squares channels per block)"),
    ("nonlinearity", "nonlinearity after the expand convs"),
    ("se", "squeeze-excitation (blocks with SE, ratio)"),
)


def _principles(g: _Groups) -> tuple[str, list[list[str]]]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    df = g.searched
    metric = g.metric
    titles = []
    for _, label in PRINCIPLES:
        titles += [f"{metric} vs {label}", f"EDF of {metric} by {label.split(' (')[0]}"]
    fig = make_subplots(rows=len(PRINCIPLES), cols=2, subplot_titles=titles, vertical_spacing=0.07)
    rows: list[list[str]] = []
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for i, (col, _) in enumerate(PRINCIPLES, start=1):
        sub = df[[col, metric, "number"]].dropna()
        if sub.empty:
            continue
        numeric = pd.api.types.is_numeric_dtype(sub[col])
        fig.add_trace(
            go.Scatter(
                x=sub[col],
                y=sub[metric],
                mode="markers",
                showlegend=False,
                marker={"color": "#1f77b4", "size": 8},
                hovertext=[f"#{n}" for n in sub["number"]],
            ),
            row=i,
            col=1,
        )
        if not g.baselines.empty and col in g.baselines:
            b = g.baselines[[col, metric, "baseline"]].dropna()
            fig.add_trace(
                go.Scatter(
                    x=b[col],
                    y=b[metric],
                    mode="markers",
                    showlegend=False,
                    marker={"color": "#ff7f0e", "symbol": "star", "size": 14},
                    hovertext=list(b["baseline"]),
                ),
                row=i,
                col=1,
            )
        groups = _choice_groups(sub[col])
        legend = "legend" if i == 1 else f"legend{i}"
        top = fig.get_subplot(i, 2).yaxis.domain[1]
        fig.update_layout(
            {legend: {"x": 1.01, "y": top, "xanchor": "left", "yanchor": "top", "title": {"text": col}}}
        )
        order = sorted(groups.unique(), key=lambda k: sub[col][groups == k].iloc[0] if numeric else k)
        for j, key in enumerate(order):
            values = np.sort(sub[metric][groups == key].to_numpy(dtype=float))
            n = len(values)
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([values[:1], values]),
                    y=np.arange(n + 1) / n,
                    mode="lines",
                    line={"shape": "hv", "color": palette[j % len(palette)]},
                    name=f"{key} (n={n})",
                    legend=legend,
                    hovertext=f"{col} = {key}, n = {n}",
                    hoverinfo="text+x+y",
                ),
                row=i,
                col=2,
            )
            rows.append(
                [
                    col,
                    str(key),
                    str(n),
                    _fmt_metric(metric, float(np.median(values))),
                    _fmt_metric(metric, float(values[-1])),
                ]
            )
        fig.update_yaxes(title_text=metric, row=i, col=1)
        fig.update_yaxes(title_text="fraction of trials", range=[0, 1.04], row=i, col=2)
        fig.update_xaxes(title_text=f"{metric} (at most x)", row=i, col=2)
    fig.update_layout(title="per-principle analysis", height=340 * len(PRINCIPLES) + 80)
    fig.update_layout(margin={"r": 170})
    return _figure_html(fig, "principles"), rows


def _importance_figure(importances: dict[str, Any]) -> str | None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ok = {k: v for k, v in importances.items() if isinstance(v, dict) and v}
    if not ok:
        return None
    fig = make_subplots(rows=1, cols=len(ok), subplot_titles=list(ok))
    for i, (name, imp) in enumerate(ok.items(), start=1):
        items = sorted(imp.items(), key=lambda kv: kv[1])
        fig.add_trace(
            go.Bar(
                x=[v for _, v in items], y=[k for k, _ in items], orientation="h", name=name, showlegend=False
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(title_text="importance (PED-ANOVA, normalised)", row=1, col=i)
    fig.update_layout(title="parameter importances per objective", height=360)
    return _figure_html(fig, "importance")


def _pareto_png(g: _Groups, info: RunInfo, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.subplots()
    metric = g.metric
    scale = 100.0 if metric == "accuracy" else 1.0

    def points(df: pd.DataFrame, **kw: Any) -> None:
        if not df.empty:
            ax.scatter(df["macs"].astype(float) / 1e6, df[metric] * scale, **kw)

    points(g.searched, c="#1f77b4", label="searched", s=25)
    points(g.pruned.dropna(subset=["macs"]), c="#8c8c8c", marker="x", label="pruned (last epoch)", s=25)
    points(g.infeasible, facecolors="none", edgecolors="#9467bd", marker="D", label="infeasible", s=30)
    if not g.feasible.empty:
        pool = g.feasible.dropna(subset=["macs"])
        front = pool[pareto_mask(pool[[metric, "macs"]].to_numpy(dtype=float), [True, False])]
        front = front.sort_values("macs")
        x, y = front["macs"].astype(float) / 1e6, front[metric] * scale
        ax.plot(x, y, "o-", c="#d62728", mfc="none", ms=10, label="Pareto front")
    points(g.baselines, c="#ff7f0e", marker="*", s=180, label="baselines", zorder=3)
    for r in g.baselines.itertuples():
        xy = (r.macs / 1e6, getattr(r, metric) * scale)
        ax.annotate(r.baseline, xy, textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.axvline(info.flops_budget / 1e6, ls="--", c="#555", lw=1, label="budget")
    window, note = _macs_window(g, info)
    if window is not None:
        ax.set_xlim(window[0] / 1e6, window[1] / 1e6)
        ax.text(0.99, 0.02, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    ax.set_xlabel(f"MACs (millions, conv+linear at {info.resolution}x{info.resolution})")
    ax.set_ylabel("proxy accuracy (%)" if metric == "accuracy" else "normalized feature rank")
    ax.set_title(f"{metric} vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)


# ---------------------------------------------------------------------------- HTML
def _table(headers: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers or ())
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


def _section(sid: str, title: str, *parts: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def _f(value: Any, digits: int = 3) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def _fp(p: Any) -> str:
    return "n/a" if p is None or math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1280px;
padding:0 24px 48px;color:#222;line-height:1.45}
h1{margin-top:24px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left}th{background:#f4f4f4}
td:not(:first-child){font-variant-numeric:tabular-nums}
.verdict{font-size:18px;font-weight:600;background:#eef6ee;border-left:5px solid #2ca02c;padding:10px 14px}
.note{background:#fff7e6;border-left:5px solid #ff7f0e;padding:8px 14px}
.muted{color:#666;font-size:13px}
nav a{margin-right:14px}
"""


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`make_report` wrote, and the verdict line."""

    html: Path
    csv: Path
    png: Path
    verdict: str
    trials: int


def make_report(run_dir: str | Path) -> ReportFiles:
    """Write trials.csv, report.html and pareto.png into the run directory."""
    import plotly.offline

    info = load_run(run_dir)
    study = info.open_study()
    trials = study.get_trials(deepcopy=False)
    frame = _frame(info, trials)
    metric = primary_metric(info)
    g = _Groups.of(frame, metric)
    configs = {t.number: c for t in trials if (c := _config_of(t.user_attrs)) is not None}

    csv_path = info.path / TRIALS_CSV
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(csv_path)
    png_path = info.path / PARETO_PNG
    _pareto_png(g, info, png_path)

    line = verdict(frame, info)
    sections = [
        _summary_section(frame, info),
        _section("verdict", "Verdict", _p(line, "verdict")),
        _pareto_section(g, info),
        _section("history", "Optimisation history", _history_figure(frame, info)),
        _profiles_section(g, configs),
        _principles_section(g),
        _calibration_section(g),
        _importance_section(study, g, info),
        _failures_section(frame, g, metric),
    ]
    nav = " ".join(
        f'<a href="#{sid}">{label}</a>'
        for sid, label in (
            ("summary", "Run"),
            ("verdict", "Verdict"),
            ("pareto", "Pareto fronts"),
            ("history", "History"),
            ("profiles", "Channel profiles"),
            ("principles", "Principles"),
            ("calibration", "Rank calibration"),
            ("importance", "Importances"),
            ("failures", "Failed trials"),
        )
    )
    title = f"rexsearch report: {info.path.name}"
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head><body>'
        f"<h1>{html.escape(title)}</h1><nav>{nav}</nav>{''.join(sections)}"
        f"<p class='muted'>Written by rexsearch {__version__} on "
        f"{_dt.datetime.now().isoformat(timespec='seconds')}.</p></body></html>\n"
    )
    html_path = info.path / REPORT_HTML
    tmp = html_path.with_name(html_path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(html_path)
    return ReportFiles(html_path, csv_path, png_path, line, len(frame))


def write_report(run_dir: str | Path) -> Path:
    """Write trials.csv, report.html and pareto.png; return the report's path."""
    return make_report(run_dir).html


def _summary_section(frame: pd.DataFrame, info: RunInfo) -> str:
    d = info.data
    budget = f"{info.flops_budget:,} MACs ({_fmt_macs(info.flops_budget)})"
    if info.params_budget is not None:
        budget += f", {info.params_budget:,} parameters"
    fidelity = d.get("fidelity") or {}
    counts = frame["state"].value_counts()
    space = d.get("space")
    space_text = (space.get("name") or space.get("path")) if isinstance(space, dict) else str(space or "n/a")
    rows = [
        ["run directory", str(info.path)],
        ["command", mask_passwords(" ".join(map(str, d.get("command", [])))) or "n/a"],
        ["budget", f"{budget} at {info.resolution}x{info.resolution}"],
        ["objectives", ", ".join(info.objectives) + " (all maximised)"],
        ["search space", space_text],
        ["sampler", str(d.get("sampler", "n/a"))],
        ["seed", str(d.get("seed", "n/a"))],
        ["proxy fidelity", ", ".join(f"{k} {v}" for k, v in fidelity.items()) or "n/a"],
        ["trials", ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "none"],
        ["versions", ", ".join(f"{k} {v}" for k, v in (d.get("versions") or {}).items()) or "n/a"],
    ]
    parts = [_table(None, rows), _p(MACS_CONVENTION.format(r=info.resolution), "note")]
    if primary_metric(info) == "rank":
        parts.append(
            _p(
                "This run is rank-only (no proxy training): every section uses the normalized feature "
                "rank in place of accuracy.",
                "note",
            )
        )
    return _section("summary", "Run", *parts)


def _pareto_section(g: _Groups, info: RunInfo) -> str:
    keys, maximize = front_objectives(info)
    front = feasible_front(g.feasible, info).sort_values([g.metric, "macs"], ascending=[False, True])
    rows = [
        [
            f"#{r.number}",
            r.baseline or "searched",
            _fmt_metric("accuracy", r.accuracy),
            _f(r.rank, 4),
            f"{r.macs:,}",
            f"{r.params:,}",
            r.config_hash,
        ]
        for r in front.itertuples()
    ]
    what = ", ".join(f"{'max' if m else 'min'} {k}" for k, m in zip(keys, maximize, strict=True))
    return _section(
        "pareto",
        "Pareto fronts",
        _p(
            "Red rings: the feasible Pareto front of each plot. Stars: the baselines. Grey crosses: pruned "
            "trials at their last reported epoch. Purple diamonds: trials over the budget (infeasible). "
            "Failed trials have no values and are listed under Failed trials."
        ),
        *_pareto_figures(g, info),
        f"<h3>Feasible Pareto front of the study ({html.escape(what)})</h3>",
        _table(["trial", "kind", "accuracy", "rank", "MACs", "params", "config"], rows),
        _p(f"Static version: {PARETO_PNG} in the run directory.", "muted"),
    )


def _profiles_section(g: _Groups, configs: dict[int, ReXNetConfig]) -> str:
    profiles = _profile_configs(g, configs)
    if not profiles:
        return _section("profiles", "Channel profiles", _p("No completed trial has a config to draw."))
    rows = []
    for label, r, _ in profiles:
        cfg = configs[r.number]
        rows.append(
            [
                label,
                str(r.expand_layers),
                _f(r.slope, 2),
                r.nonlinearity,
                r.se,
                str(cfg.depth),
                " ".join(map(str, [cfg.stem_channels, *cfg.out_channels, cfg.penultimate_channels])),
            ]
        )
    return _section(
        "profiles",
        "Channel profiles",
        _profiles_figure(profiles, configs),
        _table(
            ["config", "expand layers", "slope", "nonlinearity", "SE", "blocks", "stem, blocks, penultimate"],
            rows,
        ),
    )


def _principles_section(g: _Groups) -> str:
    if len(g.searched) < 2:
        return _section(
            "principles", "Per-principle analysis", _p("Needs at least two complete searched trials.")
        )
    fig, rows = _principles(g)
    metric = g.metric
    return _section(
        "principles",
        "Per-principle analysis",
        _p(
            f"Each row takes one of the paper's design principles. Left: {metric} of every complete searched "
            "trial against the choice it made (stars: baselines). Right: the empirical distribution "
            f"function (EDF) of {metric} per choice, in the manner of Radosavovic et al.'s design-space "
            f"analysis: the fraction of trials with {metric} at most x; a curve further to the right is a "
            "better choice. The sampler does not draw the space uniformly, so a favoured choice also has "
            "more trials; read small groups with care."
        ),
        fig,
        _table(["principle", "choice", "trials", f"median {metric}", f"best {metric}"], rows),
    )


def _calibration_section(g: _Groups) -> str:
    if g.metric == "accuracy":
        target, predictors = "accuracy", ["rank", "nuclear_norm", "macs", "params"]
        intro = (
            "Does the rank proxy predict proxy accuracy better than plain cost does? Kendall's tau and "
            "Spearman's rho (scipy.stats) between each predictor and accuracy over all complete trials "
            "(baselines and infeasible trials included). If rank is no better than MACs or params, its "
            "measurement cost buys nothing."
        )
    else:
        target, predictors = "rank", ["nuclear_norm", "macs", "params"]
        intro = (
            "This run is rank-only: no accuracy was measured, so the rank proxy cannot be calibrated "
            "here. The table relates cost to rank instead; run with --objectives accuracy,rank to "
            "calibrate rank against accuracy."
        )
    corr = _correlations(g.complete, target, predictors)
    rows = [
        [
            c["predictor"],
            str(c["n"]),
            _f(c.get("tau")),
            _fp(c.get("tau_p")),
            _f(c.get("rho")),
            _fp(c.get("rho_p")),
        ]
        for c in corr
    ]
    parts = [
        _p(intro),
        _table(["predictor", "trials", "Kendall tau", "p", "Spearman rho", "p"], rows),
    ]
    if g.metric == "accuracy":
        by = {c["predictor"]: c.get("tau") for c in corr}
        if by.get("rank") is not None and not math.isnan(by["rank"]):
            costs = [
                abs(by[k]) for k in ("macs", "params") if by.get(k) is not None and not math.isnan(by[k])
            ]
            better = not costs or abs(by["rank"]) > max(costs)
            parts.append(
                _p(
                    f"Rank {'predicts' if better else 'does not predict'} accuracy better than MACs and "
                    f"params here (|tau| {abs(by['rank']):.3f} vs "
                    f"{max(costs) if costs else float('nan'):.3f}).",
                    "note",
                )
            )
    return _section("calibration", "Rank proxy calibration", *parts)


def _importance_section(study: Any, g: _Groups, info: RunInfo) -> str:
    importances = _importances(study, set(g.searched["number"]), info.objectives)
    fig = _importance_figure(importances)
    rows, notes = [], []
    for name, imp in importances.items():
        if isinstance(imp, dict):
            rows += [[name, k, f"{v:.3f}"] for k, v in sorted(imp.items(), key=lambda kv: -kv[1])]
        else:
            notes.append(_p(f"{name}: {imp}.", "note"))
    return _section(
        "importance",
        "Parameter importances",
        _p(
            "optuna.importance.get_param_importances with PED-ANOVA (how much each parameter sets the "
            "best trials of an objective apart from the rest) per objective, over the complete, feasible "
            "searched trials (baselines left out). With few trials, read it as a hint."
        ),
        fig or "",
        *notes,
        _table(["objective", "parameter", "importance"], rows) if rows else "",
    )


def _failures_section(frame: pd.DataFrame, g: _Groups, metric: str) -> str:
    failed = [
        [f"#{r.number}", r.config_hash or "n/a", r.error or "(no error recorded)"]
        for r in g.failed.itertuples()
    ]
    feasible = frame["feasible"].fillna(True).astype(bool)
    rest = frame[(frame["state"] != "FAIL") & ((frame["state"] != "COMPLETE") | ~feasible)]
    others = [
        [
            f"#{r.number}",
            r.state.lower(),
            "n/a" if pd.isna(r.feasible) else ("yes" if r.feasible else "no (over the budget)"),
            _fmt_metric(metric, getattr(r, metric)),
            _fmt_macs(r.macs),
            r.error,
        ]
        for r in rest.itertuples()
    ]
    return _section(
        "failures",
        "Failed, pruned and infeasible trials",
        _p("Failed trials have no objective values; their errors:"),
        _table(["trial", "config", "error"], failed) if failed else _p("No trial failed."),
        _p(
            f"Pruned trials (stopped early, or over the budget before training) and complete trials over "
            f"the budget; {metric} is the last value reported:"
        ),
        _table(["trial", "state", "feasible", metric, "MACs", "note"], others) if others else _p("None."),
    )


# ---------------------------------------------------------------------------- dashboard
class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not log every request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged (the library never prints)."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def dashboard_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080) -> WSGIServer:
    """optuna-dashboard on the run's storage, bound to ``host:port`` (0: any free port), not yet serving.

    Call ``serve_forever()`` on the result; ``shutdown()`` from another thread stops it.
    A busy port or a missing run raises :class:`UserError`.
    """
    from optuna_dashboard import wsgi

    info = load_run(run_dir)
    storage = info.open_storage()
    info.open_study(storage)
    app = wsgi(storage)
    try:
        return make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use; choose another with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
