"""The report's figures: plotly (embedded in report.html) and the static PNG (matplotlib).

Each function takes the report's :class:`~rexsearch.report.analysis.Groups` and returns an
HTML fragment (a plotly ``div``; plotly.js is embedded once by the page) or writes a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rexsearch.config import ReXNetConfig
from rexsearch.files import atomic_write
from rexsearch.report.analysis import Groups, fmt_macs, fmt_metric
from rexsearch.results import METRICS, pareto_mask
from rexsearch.rundir import RunInfo

_STYLE = {
    "searched": {"color": "#1f77b4", "symbol": "circle"},
    "front": {"color": "#d62728", "symbol": "circle-open"},
    "baseline": {"color": "#ff7f0e", "symbol": "star"},
    "pruned": {"color": "#8c8c8c", "symbol": "x"},
    "infeasible": {"color": "#9467bd", "symbol": "diamond-open"},
}


def _hover(df: pd.DataFrame, metric: str) -> list[str]:
    def latency(r: Any) -> str:
        value = getattr(r, "latency", None)
        return "" if value is None or pd.isna(value) else f"<br>latency {fmt_metric('latency', value)}"

    return [
        f"#{r.number} {r.baseline or ''}<br>{metric} {fmt_metric(metric, getattr(r, metric))}"
        f"<br>MACs {fmt_macs(r.macs)}{latency(r)}<br>config {r.config_hash}"
        for r in df.itertuples()
    ]


def _add_groups(fig: Any, g: Groups, x: str, y: str, maximize_x: bool, xscale: float) -> None:
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


def figure_html(fig: Any, name: str) -> str:
    fig.update_layout(template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=f"fig-{name}", config={"displaylogo": False}
    )


def _macs_window(g: Groups, info: RunInfo) -> tuple[tuple[float, float] | None, str]:
    """An x range around the feasible trials and the budget, when infeasible outliers would squash it."""
    inside = pd.concat([g.feasible["macs"], g.pruned["macs"]]).dropna()
    outliers = g.infeasible["macs"].dropna()
    if inside.empty or outliers.empty:
        return None, ""
    budget = info.flops_budget
    lo, hi = float(inside.min()), max(float(inside.max()), float(budget or 0))
    pad = max(0.1 * (hi - lo), 0.005 * (budget or hi))
    beyond = outliers[outliers > hi + pad]
    if beyond.empty:
        return None, ""
    n = len(beyond)
    note = f"{n} infeasible trial{'s' if n > 1 else ''} off the right edge (up to {fmt_macs(beyond.max())})"
    return (lo - pad, hi + pad), note


def axis_format(metric: str) -> str:
    """Plotly's tick format for a metric's axis: accuracy (a fraction) in percent, as every table
    and sentence shows it; other metrics as they are."""
    return ".1%" if metric == "accuracy" else ""


def pareto_figures(g: Groups, info: RunInfo) -> list[str]:
    import plotly.graph_objects as go

    metric = g.metric
    label = METRICS[metric].label
    fig = go.Figure()
    _add_groups(fig, g, "macs", metric, maximize_x=False, xscale=1e6)
    if info.flops_budget is not None:
        fig.add_vline(
            x=info.flops_budget / 1e6, line_dash="dash", line_color="#555", annotation_text="budget"
        )
    window, note = _macs_window(g, info)
    if window is not None:
        fig.update_xaxes(range=[window[0] / 1e6, window[1] / 1e6])
        fig.add_annotation(text=note, xref="paper", yref="paper", x=1, y=0, showarrow=False, yshift=8)
    fig.update_layout(
        title=f"{label} vs MACs (front: more {metric}, fewer MACs)",
        xaxis_title=f"MACs (millions, conv+linear at {info.resolution}x{info.resolution})",
        yaxis_title=label,
        yaxis_tickformat=axis_format(metric),
        height=480,
    )
    out = [figure_html(fig, "pareto-macs")]
    fig = go.Figure()
    if metric == "accuracy" and "rank" in info.objectives:
        _add_groups(fig, g, "rank", metric, maximize_x=True, xscale=1.0)
        title, xtitle = "proxy accuracy vs feature rank (the study's Pareto front)", METRICS["rank"].label
    elif metric == "accuracy":
        _add_groups(fig, g, "rank", metric, maximize_x=True, xscale=1.0)
        title, xtitle = "proxy accuracy vs feature rank (front: both higher)", METRICS["rank"].label
    else:
        _add_groups(fig, g, "params", metric, maximize_x=False, xscale=1e6)
        title, xtitle = (
            "feature rank vs parameters (rank-only run; front: more rank, fewer params)",
            ("parameters (millions)"),
        )
    fig.update_layout(
        title=title, xaxis_title=xtitle, yaxis_title=label, yaxis_tickformat=axis_format(metric), height=480
    )
    out.append(figure_html(fig, "pareto-rank"))
    if info.latency_budget_ms is not None:
        out.append(_latency_figure(g, info))
    return out


def _latency_figure(g: Groups, info: RunInfo) -> str:
    """The primary metric against latency (measured on the worker, else predicted), with the budget."""
    import plotly.graph_objects as go

    metric = g.metric
    fig = go.Figure()
    _add_groups(fig, g, "latency", metric, maximize_x=False, xscale=1.0)
    fig.add_vline(
        x=info.latency_budget_ms, line_dash="dash", line_color="#555", annotation_text="latency budget"
    )
    env = info.latency_environment or {}
    where = f" on {env.get('device_name')} ({env.get('runtime')}, {env.get('threads')} threads)"
    fig.update_layout(
        title=f"{METRICS[metric].label} vs latency (front: more {metric}, lower latency)",
        xaxis_title=f"latency (ms, measured on the worker, else predicted){where if env else ''}",
        yaxis_title=METRICS[metric].label,
        yaxis_tickformat=axis_format(metric),
        height=480,
    )
    return figure_html(fig, "pareto-latency")


def history_figure(frame: pd.DataFrame, info: RunInfo) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    objectives = info.objectives
    fig = make_subplots(rows=len(objectives), cols=1, shared_xaxes=True, subplot_titles=objectives)
    for i, name in enumerate(objectives, start=1):
        col = name if name in frame else f"value_{name}"
        first = i == 1
        done = frame[(frame["state"] == "COMPLETE") & frame[col].notna()]
        ok = done[done["feasible"].eq(True).fillna(False).astype(bool)]
        for label, df, style in (
            ("complete", ok, "searched"),
            ("infeasible", done[done["feasible"].eq(False).fillna(False).astype(bool)], "infeasible"),
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
            ordered = ok.sort_values("number")[col]
            best = ordered.cummax() if METRICS[name].maximize else ordered.cummin()
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
        fig.update_yaxes(title_text=name, tickformat=axis_format(name), row=i, col=1)
    fig.update_xaxes(title_text="trial number", row=len(objectives), col=1)
    fig.update_layout(title="optimisation history", height=300 * len(objectives) + 80)
    return figure_html(fig, "history")


def profiles_figure(profiles: list[tuple[str, Any, bool]], configs: dict[int, ReXNetConfig]) -> str:
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
    return figure_html(fig, "profiles")


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


def principles_figure(g: Groups) -> tuple[str, list[list[str]]]:
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
                    fmt_metric(metric, float(np.median(values))),
                    fmt_metric(metric, float(values[-1])),
                ]
            )
        fig.update_yaxes(title_text=metric, tickformat=axis_format(metric), row=i, col=1)
        fig.update_yaxes(title_text="fraction of trials", range=[0, 1.04], row=i, col=2)
        fig.update_xaxes(title_text=f"{metric} (at most x)", tickformat=axis_format(metric), row=i, col=2)
    fig.update_layout(title="per-principle analysis", height=340 * len(PRINCIPLES) + 80)
    fig.update_layout(margin={"r": 170})
    return figure_html(fig, "principles"), rows


def importance_figure(importances: dict[str, Any]) -> str | None:
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
    return figure_html(fig, "importance")


def pareto_png(g: Groups, info: RunInfo, path: Path) -> None:
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
    if info.flops_budget is not None:
        ax.axvline(info.flops_budget / 1e6, ls="--", c="#555", lw=1, label="budget")
    window, note = _macs_window(g, info)
    if window is not None:
        ax.set_xlim(window[0] / 1e6, window[1] / 1e6)
        ax.text(0.99, 0.02, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    ax.set_xlabel(f"MACs (millions, conv+linear at {info.resolution}x{info.resolution})")
    ax.set_ylabel(METRICS[metric].label + (" (%)" if METRICS[metric].kind == "fraction" else ""))
    ax.set_title(f"{metric} vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def confirmation_figure(confirmation: Any) -> str:
    """Per confirmed config: one dot per seed's accuracy, the mean with a ±1 std bar."""
    import plotly.graph_objects as go

    summary = confirmation.summary
    fig = go.Figure()
    complete = confirmation.complete
    for r in summary.itertuples():
        rows = complete[complete["label"] == r.label]
        style = _STYLE["baseline" if r.role == "baseline" else "searched"]
        fig.add_trace(
            go.Scatter(
                x=[r.label] * len(rows),
                y=rows["accuracy"] * 100,
                mode="markers",
                name=f"{r.label} seeds",
                marker={"color": style["color"], "size": 9, "opacity": 0.6},
                hovertext=[
                    f"{r.label} seed {s}: {100 * a:.2f}%"
                    for s, a in zip(rows.seed, rows.accuracy, strict=True)
                ],
                hoverinfo="text",
                showlegend=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[r.label],
                y=[100 * r.mean],
                mode="markers",
                name=f"{r.label} mean",
                marker={"color": "#222", "symbol": "line-ew-open", "size": 30, "line": {"width": 3}},
                error_y={"type": "data", "array": [0.0 if r.n < 2 else 100 * r.std], "visible": True},
                hovertext=[f"{r.label}: mean {100 * r.mean:.2f}% over {r.n} seeds"],
                hoverinfo="text",
                showlegend=False,
            )
        )
    fig.update_layout(
        title="confirmation: proxy accuracy per seed (dots), mean ± 1 std (bars)",
        yaxis_title="proxy accuracy (%)",
        xaxis_title="config",
        height=420,
    )
    return figure_html(fig, "confirmation")
