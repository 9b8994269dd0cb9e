"""The report's HTML: small builders and one function per section of report.html."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from rexsearch.cost import macs_convention
from rexsearch.datasets import describe as describe_dataset
from rexsearch.report.analysis import (
    MIN_INTERVAL_TRIALS,
    Groups,
    correlations,
    fmt_macs,
    fmt_metric,
    importances,
    profile_configs,
    tau_differences,
)
from rexsearch.report.evidence import fidelity_evidence
from rexsearch.report.figures import (
    confirmation_figure,
    importance_figure,
    pareto_figures,
    principles_figure,
    profiles_figure,
)
from rexsearch.results import DEFAULT_RANK_PROTOCOL, METRICS, RANK_PROTOCOLS, front_keys
from rexsearch.rundir import PARETO_PNG
from rexsearch.storage import mask_passwords


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers or ())
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def para(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


def section(sid: str, title: str, *parts: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def fnum(value: Any, digits: int = 3) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def fpval(p: Any) -> str:
    return "n/a" if p is None or math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1280px;
padding:0 24px 48px;color:#222;line-height:1.45}
h1{margin-top:24px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left}th{background:#f4f4f4}
td:not(:first-child){font-variant-numeric:tabular-nums}
.verdict{font-size:18px;font-weight:600;background:#f3f4f6;border-left:5px solid #8a8f98;padding:10px 14px}
.verdict.good{background:#eef6ee;border-left-color:#2ca02c}
.verdict.warn{background:#fdf3e7;border-left-color:#e07b00}
.note{background:#fff7e6;border-left:5px solid #ff7f0e;padding:8px 14px}
.muted{color:#666;font-size:13px}
nav a{margin-right:14px}
"""


def html_page(title: str, body: str, footer: str = "") -> str:
    """A self-contained page (the report, ``compare``, the rank studies): the house style, plotly.js
    inlined once, ``title`` as the page's title and heading, then ``body``, then a line naming the
    rexsearch version and the time it was written (and ``footer``)."""
    import datetime as dt

    import plotly

    from rexsearch import __version__

    written = f"Written by rexsearch {__version__} on {dt.datetime.now().isoformat(timespec='seconds')}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head><body>'
        f"<h1>{html.escape(title)}</h1>{body}"
        f"<p class='muted'>{written}{'; ' + footer if footer else ''}.</p></body></html>\n"
    )


def summary_section(g: Groups) -> str:
    info, frame = g.run, g.results.table
    d = info.data
    budget = info.describe_budget()
    env = info.latency_environment
    if env:
        budget += f" (latency on {env.get('device')} {env.get('device_name')}, {env.get('runtime')} "
        budget += f"{env.get('runtime_version')}, {env.get('threads')} threads)"
    fidelity = info.fidelity
    counts = frame["state"].value_counts()
    space = d.get("space")
    space_text = (space.get("name") or space.get("path")) if isinstance(space, dict) else str(space or "n/a")
    data = info.dataset
    rows = [
        ["run directory", str(info.path)],
        ["command", mask_passwords(" ".join(map(str, d.get("command", [])))) or "n/a"],
        ["data set", describe_dataset(data)],
        *([["data set digest", str(data["digest"])]] if data and data.get("digest") else []),
        ["budget", f"{budget} at {info.resolution}x{info.resolution}"],
        [
            "objectives",
            ", ".join(f"{o} ({'max' if METRICS[o].maximize else 'min'}imised)" for o in info.objectives),
        ],
        ["search space", space_text],
        ["sampler", str(info.sampler or "n/a")],
        ["seed", str(info.settings.get("seed", "n/a"))],
        ["proxy fidelity", ", ".join(f"{k} {v}" for k, v in fidelity.items()) or "n/a"],
        ["trials", ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "none"],
        ["versions", ", ".join(f"{k} {v}" for k, v in (d.get("versions") or {}).items()) or "n/a"],
    ]
    parts = [table(None, rows), para(macs_convention(info.resolution), "note")]
    if info.stand_in_data:
        parts.insert(0, para(info.stand_in_data, "note"))
    if g.metric == "rank":
        parts.append(
            para(
                "This run is rank-only (no proxy training): every section uses the normalized feature "
                "rank in place of accuracy.",
                "note",
            )
        )
    return section("summary", "Run", *parts)


def pareto_section(g: Groups) -> str:
    info = g.run
    keys, maximize = front_keys(info.objectives)
    front = g.results.front
    latency = info.latency_budget_ms is not None
    rows = [
        [
            f"#{r.number}",
            r.baseline or "searched",
            fmt_metric("accuracy", r.accuracy),
            fnum(r.rank, 4),
            f"{r.macs:,}",
            f"{r.params:,}",
            *([fmt_metric("latency", r.latency)] if latency else []),
            r.config_hash,
        ]
        for r in front.itertuples()
    ]
    headers = ["trial", "kind", "accuracy", "rank", "MACs", "params", *(["latency"] if latency else [])]
    what = ", ".join(f"{'max' if m else 'min'} {k}" for k, m in zip(keys, maximize, strict=True))
    return section(
        "pareto",
        "Pareto fronts",
        para(
            "Red rings: the feasible Pareto front of each plot. Stars: the baselines. Grey crosses: pruned "
            "trials at their last reported epoch. Purple diamonds: trials over the budget (infeasible). "
            "Failed trials have no values and are listed under Failed trials."
        ),
        *pareto_figures(g, info),
        f"<h3>Feasible Pareto front of the study ({html.escape(what)})</h3>",
        table([*headers, "config"], rows),
        para(f"Static version: {PARETO_PNG} in the run directory.", "muted"),
    )


def profiles_section(g: Groups) -> str:
    configs = g.configs()
    profiles = profile_configs(g, configs)
    if not profiles:
        return section("profiles", "Channel profiles", para("No completed trial has a config to draw."))
    rows = []
    for label, r, _ in profiles:
        cfg = configs[r.number]
        rows.append(
            [
                label,
                str(r.expand_layers),
                fnum(r.slope, 2),
                r.nonlinearity,
                r.se,
                str(cfg.depth),
                " ".join(map(str, [cfg.stem_channels, *cfg.out_channels, cfg.penultimate_channels])),
            ]
        )
    return section(
        "profiles",
        "Channel profiles",
        profiles_figure(profiles, configs),
        table(
            ["config", "expand layers", "slope", "nonlinearity", "SE", "blocks", "stem, blocks, penultimate"],
            rows,
        ),
    )


def principles_section(g: Groups) -> str:
    if len(g.searched) < 2:
        return section(
            "principles", "Per-principle analysis", para("Needs at least two complete searched trials.")
        )
    fig, rows = principles_figure(g)
    metric = g.metric
    return section(
        "principles",
        "Per-principle analysis",
        para(
            f"Each row takes one of the paper's design principles. Left: {metric} of every complete searched "
            "trial against the choice it made (stars: baselines). Right: the empirical distribution "
            f"function (EDF) of {metric} per choice, in the manner of Radosavovic et al.'s design-space "
            f"analysis: the fraction of trials with {metric} at most x; a curve further to the right is a "
            "better choice. The sampler does not draw the space uniformly, so a favoured choice also has "
            "more trials; read small groups with care."
        ),
        fig,
        table(["principle", "choice", "trials", f"median {metric}", f"best {metric}"], rows),
    )


def calibration_section(g: Groups) -> str:
    if g.metric == "accuracy":
        target, predictors = "accuracy", ["rank", "nuclear_norm", "macs", "params"]
        intro = (
            "Does the rank proxy predict proxy accuracy better than plain cost does? Kendall's tau (with "
            "a 95% bootstrap interval over trials) and Spearman's rho (scipy.stats) between each "
            "predictor and accuracy over all complete trials (baselines and infeasible trials "
            "included). If rank is no better than MACs or params, its measurement cost buys nothing."
        )
    else:
        target, predictors = "rank", ["nuclear_norm", "macs", "params"]
        intro = (
            "This run is rank-only: no accuracy was measured, so the rank proxy cannot be calibrated "
            "here. The table relates cost to rank instead; run with --objectives accuracy (rank is "
            "recorded for every trial) to calibrate rank against accuracy."
        )
    protocol = g.run.settings.get("rank_protocol") or DEFAULT_RANK_PROTOCOL
    intro += (
        f" The rank objective was measured with the {protocol} protocol "
        f"({RANK_PROTOCOLS.get(protocol, 'unknown')}; see `rexsearch rank --help`)."
    )
    corr = correlations(g.complete, target, predictors)
    rows = [
        [
            c["predictor"],
            str(c["n"]),
            fnum(c.get("tau")),
            f"[{fnum(c.get('tau_low'))}, {fnum(c.get('tau_high'))}]" if "tau_low" in c else "n/a",
            fpval(c.get("tau_p")),
            fnum(c.get("rho")),
            fpval(c.get("rho_p")),
        ]
        for c in corr
    ]
    parts = [
        para(intro),
        table(["predictor", "trials", "Kendall tau", "95% interval", "p", "Spearman rho", "p"], rows),
    ]
    if len(g.complete) < MIN_INTERVAL_TRIALS:
        parts.append(
            para(
                f"Intervals and a verdict need at least {MIN_INTERVAL_TRIALS} complete trials; this run "
                f"has {len(g.complete)}, so the table's taus are single estimates only.",
                "note",
            )
        )
    elif g.metric == "accuracy":
        verdict = rank_verdict(tau_differences(g.complete, "rank", "accuracy", ["macs", "params"]))
        if verdict:
            parts.append(para(verdict, "note"))
    parts.append(para(fidelity_evidence(g.run.dataset["dataset"] if g.run.dataset else None), "note"))
    return section("calibration", "Rank proxy calibration", *parts)


def rank_verdict(diffs: dict[str, Any]) -> str:
    """A sentence on whether rank ordered this run's trials by accuracy better than each cost
    beyond noise (the paired interval of the tau difference above zero), or "" with nothing
    to compare."""
    if not diffs:
        return ""
    names = {name: METRICS[name].label if name in METRICS else name for name in diffs}
    shown = "; ".join(
        f"rank minus {names[n]}: {d.tau:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" for n, d in diffs.items()
    )
    groups = {
        "better than": [names[n] for n, d in diffs.items() if d.low > 0],
        "not better than": [names[n] for n, d in diffs.items() if d.low <= 0 <= d.high],
        "worse than": [names[n] for n, d in diffs.items() if d.high < 0],
    }
    said = [
        f"{word} {(' or ' if word.startswith('not') else ' and ').join(found)} beyond noise"
        for word, found in groups.items()
        if found
    ]
    if not said:  # no interval could be had (undefined taus in every resample)
        return ""
    return (
        f"In this run, at ordering the trials by proxy accuracy, rank is {' and '.join(said)} "
        f"(differences of Kendall tau with paired 95% bootstrap intervals: {shown})."
    )


def importance_section(g: Groups) -> str:
    found = importances(g.results.study, set(g.searched["number"]), g.run.objectives)
    fig = importance_figure(found)
    rows, notes = [], []
    for name, imp in found.items():
        if isinstance(imp, dict):
            rows += [[name, k, f"{v:.3f}"] for k, v in sorted(imp.items(), key=lambda kv: -kv[1])]
        else:
            notes.append(para(f"{name}: {imp}.", "note"))
    return section(
        "importance",
        "Parameter importances",
        para(
            "optuna.importance.get_param_importances with PED-ANOVA (how much each parameter sets the "
            "best trials of an objective apart from the rest) per objective, over the complete, feasible "
            "searched trials (baselines left out). With few trials, read it as a hint."
        ),
        fig or "",
        *notes,
        table(["objective", "parameter", "importance"], rows) if rows else "",
    )


def failures_section(g: Groups) -> str:
    frame, metric = g.results.table, g.metric
    failed = [
        [f"#{r.number}", r.config_hash or "n/a", r.error or "(no error recorded)"]
        for r in g.failed.itertuples()
    ]
    feasible = frame["feasible"].eq(True).fillna(False).astype(bool)
    rest = frame[(frame["state"] != "FAIL") & ((frame["state"] != "COMPLETE") | ~feasible)]
    others = [
        [
            f"#{r.number}",
            r.state.lower(),
            "n/a" if pd.isna(r.feasible) else ("yes" if r.feasible else "no (over the budget)"),
            fmt_metric(metric, getattr(r, metric)),
            fmt_macs(r.macs),
            r.error,
        ]
        for r in rest.itertuples()
    ]
    return section(
        "failures",
        "Failed, pruned and infeasible trials",
        para("Failed trials have no objective values; their errors:"),
        table(["trial", "config", "error"], failed) if failed else para("No trial failed."),
        para(
            f"Pruned trials (stopped early, or over the budget before training) and complete trials over "
            f"the budget; {metric} is the last value reported:"
        ),
        table(["trial", "state", "feasible", metric, "MACs", "note"], others) if others else para("None."),
    )


def confirmation_section(g: Groups) -> str:
    """Seed dots and means per confirmed config, and the CI of each difference from the best."""
    from rexsearch.stats import CI_METHOD

    c = g.results.confirmation
    if not c:
        return section(
            "confirmation",
            "Confirmation",
            para(
                "No confirmation trainings: every number in this report comes from one short proxy "
                f"training per config. `rexsearch confirm {g.run.path}` retrains the top configs and "
                "every baseline with several seeds and puts the verdict on the noise it measures.",
                "note",
            ),
        )
    m = METRICS["accuracy"]
    summary = c.summary
    diffs = dict(c.comparisons())
    rows = []
    for r in summary.itertuples():
        d = diffs.get(r.label)
        rows.append(
            [
                r.label,
                r.role if r.role == "baseline" else f"searched (#{int(r.pick_rank)} by the search)",
                f"#{int(r.source_trial)}",
                str(r.n),
                m.format(r.mean),
                "n/a" if r.n < 2 else f"{100 * r.std:.2f} points",
                "(the config the verdict is about)" if d is None else m.format_diff(-d.diff),
                "" if d is None or not d.tested else f"[{100 * -d.high:+.2f}, {100 * -d.low:+.2f}]",
                "" if d is None else d.verdict,
            ]
        )
    seeds = sorted({int(s) for s in c.complete["seed"].dropna()})
    failed = c.table[c.table["state"] == "FAIL"]
    return section(
        "confirmation",
        "Confirmation",
        para(
            f"Each config retrained with seeds {', '.join(map(str, seeds))} (fresh seeds: not the one the "
            f"search selected on) at {int(summary['epochs'].max())} epochs, on the search's data split "
            f"and per-trial resources. Differences are the config's mean minus the best's, with the "
            f"{CI_METHOD}; a difference whose interval contains 0 is within noise."
        ),
        confirmation_figure(c),
        table(
            [
                "config",
                "kind",
                "source trial",
                "seeds",
                "mean accuracy",
                "std",
                "vs best",
                "95% CI",
                "the best config",
            ],
            rows,
        ),
        para(f"{len(failed)} confirmation training(s) failed; see the confirm study.", "note")
        if len(failed)
        else "",
    )
