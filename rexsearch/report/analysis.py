"""What the report concludes from a run: trial groups, the verdict, calibration, importances."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from rexsearch.config import ReXNetConfig
from rexsearch.results import METRICS, RunResults, directions, order_best_first, record_config

#: Fewest complete searched trials for which parameter importances are computed.
MIN_IMPORTANCE_TRIALS = 5
#: How many top searched configs the channel-profile section draws.
TOP_PROFILES = 5


@dataclass(frozen=True)
class Groups:
    """The trials split the way every plot and table of the report uses them.

    ``feasible`` is :attr:`RunResults.feasible` (the one feasibility rule); ``infeasible``
    the complete trials that rule puts over the budget.
    """

    results: RunResults
    metric: str
    complete: pd.DataFrame
    feasible: pd.DataFrame
    searched: pd.DataFrame
    baselines: pd.DataFrame
    pruned: pd.DataFrame
    infeasible: pd.DataFrame
    failed: pd.DataFrame

    @classmethod
    def of(cls, results: RunResults) -> Groups:
        frame, metric = results.table, results.primary
        complete = frame[(frame["state"] == "COMPLETE") & frame[metric].notna()]
        feasible = results.feasible
        return cls(
            results=results,
            metric=metric,
            complete=complete,
            feasible=feasible,
            searched=feasible[feasible["baseline"] == ""],
            baselines=complete[complete["baseline"] != ""],
            pruned=frame[(frame["state"] == "PRUNED") & frame[metric].notna()],
            infeasible=complete[complete["feasible"].eq(False).fillna(False).astype(bool)],
            failed=frame[frame["state"] == "FAIL"],
        )

    @property
    def run(self):
        return self.results.run

    def configs(self) -> dict[int, ReXNetConfig]:
        """The target config of every trial that has one, by trial number."""
        return {t.number: c for t in self.results.trials if (c := record_config(t.user_attrs)) is not None}

    def best_searched(self) -> pd.Series | None:
        """The best searched trial: the first of :meth:`RunResults.ranked` (one order everywhere)."""
        if self.searched.empty:
            return None
        first = self.results.ranked(self.metric)[0]
        return self.searched[self.searched["number"] == first].iloc[0]


def fmt_metric(metric: str, value: Any) -> str:
    return METRICS[metric].format(value)


def fmt_macs(macs: Any) -> str:
    return "n/a" if macs is None or pd.isna(macs) else f"{macs / 1e6:.1f}M"


#: What an unconfirmed verdict adds: it cannot tell a gain from seed noise.
SINGLE_TRAININGS = (
    "This rests on single trainings (one proxy training per config, so seed-to-seed noise is not "
    "estimated): confirm it with `rexsearch confirm {run}`."
)


def verdict(g: Groups) -> str:
    """The report's verdict: first, when the proxies have not learned, that no comparison holds;
    then the confirmed verdict when the run has confirmation trainings, otherwise the
    single-training comparison, saying that it rests on single trainings."""
    chance = chance_level(g)
    if chance:
        return chance
    if g.results.confirmation:
        return confirmed_verdict(g)
    line = single_training_verdict(g)
    if g.metric == "accuracy" and g.best_searched() is not None and not g.baselines.empty:
        line += " " + SINGLE_TRAININGS.format(run=g.run.path)
    return line


def verdict_tone(g: Groups) -> str:
    """How the report colours the verdict: ``warn`` when the proxies have not learned or a
    confirmed baseline is ahead of the search's best, ``good`` only when the confirmation shows
    the best ahead of the paper's design beyond noise, else ``open`` (single trainings, ties)."""
    from rexsearch.stats import BEATS, LOSES

    if chance_level(g):
        return "warn"
    c = g.results.confirmation
    if not c:
        return "open"
    summary = c.summary.set_index("label")
    words = {label: d.verdict for label, d in c.comparisons() if summary.loc[label, "role"] == "baseline"}
    if any(w == LOSES for w in words.values()):
        return "warn"
    return "good" if words.get(PAPER_BASELINE) == BEATS else "open"


def confirmed_verdict(g: Groups) -> str:
    """The best confirmed config against each confirmed baseline: means ± std over seeds, the
    difference with its 95% Welch t interval, and beats / ties (within noise) / loses."""
    from rexsearch.stats import CI_METHOD

    c = g.results.confirmation
    m = METRICS["accuracy"]
    summary = c.summary.set_index("label")
    best = c.best_label
    budget = fmt_macs(g.run.flops_budget)
    if best is None:
        return "The confirmation has no completed training of a searched config; nothing to compare."

    def ms(label: str) -> str:
        r = summary.loc[label]
        spread = f" ± {100 * r['std']:.2f}" if r["n"] > 1 else ""
        return f"{m.format(r['mean'])}{spread} over {int(r['n'])} seed{'s' if r['n'] > 1 else ''}"

    r = summary.loc[best]
    head = (
        f"Confirmed at {int(r['epochs'])} epochs: the best searched config ({best}, {ms(best)}, "
        f"{fmt_macs(r['macs'])} MACs)"
    )
    parts = []
    compared = [(label, d) for label, d in c.comparisons() if summary.loc[label, "role"] == "baseline"]
    compared.sort(key=lambda item: item[0] != PAPER_BASELINE)  # the paper's design first
    for label, d in compared:
        interval = f", 95% CI [{100 * d.low:+.2f}, {100 * d.high:+.2f}]" if d.tested else ", no interval"
        parts.append(f"{d.verdict} {label} ({ms(label)}): {m.format_diff(d.diff)}{interval}")
    same = c.same_as_best()
    if same:
        parts.append(f"it is the same network as {' and '.join(same)}, which it is not compared with")
    if not parts:
        return f"{head}; no baseline was confirmed to compare with."
    return f"{head} at the {budget} MACs budget: " + "; ".join(parts) + f" ({CI_METHOD})."


#: The paper's design, which the headline compares the search's best with first.
PAPER_BASELINE = "rexnet-linear"
#: Standard errors of a binomial proportion within which an accuracy counts as chance.
CHANCE_SIGMAS = 3.0
#: Training steps per proxy from which the committed examples' proxies learned (reports/): a
#: floor for the suggestion, not a promise.
LEARNING_STEPS = 150


def chance_level(g: Groups) -> str | None:
    """A sentence when the proxies have not learned, else None: the best proxy accuracy of the run
    is within :data:`CHANCE_SIGMAS` binomial standard errors of chance (1 / classes) over the
    validation images, so no comparison between configs means anything. It names the fidelity
    and suggests one with at least :data:`LEARNING_STEPS` steps per proxy."""
    import math

    if g.metric != "accuracy" or g.complete.empty:
        return None
    confirmed = g.results.confirmation
    # a confirmation (possibly at more epochs) is judged on its own trainings
    accuracies = confirmed.complete["accuracy"] if confirmed else g.complete["accuracy"]
    data = g.run.dataset or {}
    fidelity = g.run.fidelity
    classes = int(data.get("classes") or 100)
    n = int((data.get("split") or {}).get("val_images") or fidelity.get("val_images") or 0)
    if classes < 2 or n < 1:
        return None
    chance = 1.0 / classes
    noise = CHANCE_SIGMAS * math.sqrt(chance * (1 - chance) / n)
    best = float(accuracies.max())
    if best > chance + noise:
        return None
    epochs = int((confirmed.complete["epochs"].max() if confirmed else 0) or fidelity.get("epochs") or 0)
    batch = int(fidelity.get("batch_size") or 128)
    images = int((data.get("split") or {}).get("train_images") or fidelity.get("train_images") or 0)
    steps = epochs * images // batch if images else None
    hint = ""
    if steps is not None and images:
        wanted = max(epochs + 1, math.ceil(LEARNING_STEPS * batch / images))
        hint = (
            f" Each proxy trained about {steps} steps ({epochs} epochs x {images:,} images / batch "
            f"{batch}); for at least {LEARNING_STEPS}, run with --epochs {wanted} (or more --train-images)."
        )
    return (
        f"The proxies have not learned: the best proxy accuracy, {fmt_metric('accuracy', best)}, is within "
        f"noise of chance ({100 * chance:.1f}% for {classes} classes, ±{100 * noise:.1f} points over "
        f"{n:,} validation images), so no config is shown better than another at this fidelity.{hint}"
    )


def single_training_verdict(g: Groups) -> str:
    """One sentence from one training per config. It answers first whether the best searched
    config is ahead of the paper's ReXNet (:data:`PAPER_BASELINE`) or behind it, then the other
    baselines; single trainings never "beat" anything (no seed noise is measured)."""
    metric = g.metric
    m = METRICS[metric]
    budget = g.run.describe_budget()
    best = g.best_searched()
    if best is None:
        return f"No searched trial completed within the budget ({budget}); nothing to compare."

    def points(diff: float) -> str:
        return m.format_diff(diff).lstrip("+")

    lead = "On single trainings," if metric == "accuracy" else f"By {metric} (one measurement per config),"
    mine = (
        f"the best searched config (trial #{best['number']}, {m.format(best[metric])}, "
        f"{fmt_macs(best['macs'])} MACs)"
    )
    frame = g.results.table
    expected = list(dict.fromkeys(frame.loc[frame["baseline"] != "", "baseline"].tolist()))
    if not expected:
        return f"{mine[0].upper()}{mine[1:]}; the run has no baseline trials to compare with."
    expected.sort(key=lambda name: name != PAPER_BASELINE)
    parts: list[str] = []
    for name in expected:
        rows = g.baselines[g.baselines["baseline"] == name]
        if rows.empty:
            parts.append(
                f"{lead} {mine}; {name} did not complete" if not parts else f"{name} did not complete"
            )
            continue
        b = rows.iloc[0]
        diff = float(best[metric] - b[metric])
        over = not pd.isna(b["feasible"]) and not bool(b["feasible"])
        what = f"{name} ({m.format(b[metric])}{', over the budget' if over else ''})"
        if not parts and name == PAPER_BASELINE:
            if diff > 0:
                parts.append(f"{lead} {mine} is ahead of the paper's ReXNet, {what}, by {points(diff)}")
            elif diff < 0:
                parts.append(f"{lead} the paper's ReXNet, {what}, is ahead of {mine} by {points(-diff)}")
            else:
                parts.append(f"On single trainings, {mine} ties with the paper's ReXNet, {what}")
            continue
        if not parts:
            parts.append(f"{lead} {mine}")
        side = "ahead of" if diff > 0 else "behind" if diff < 0 else "level with"
        parts.append(f"{side} {what} by {points(abs(diff))}" if diff else f"{side} {what}")
    return "; ".join(parts) + f" at the budget ({budget})."


#: Bootstrap resamples behind the report's intervals on Kendall's tau.
CALIBRATION_RESAMPLES = 1000
#: Fewest trials for a bootstrap interval on tau (and the verdict built on it): below it the
#: percentile bootstrap of a handful of items gives intervals far narrower than the truth.
MIN_INTERVAL_TRIALS = 10


def correlations(df: pd.DataFrame, target: str, predictors: Sequence[str]) -> list[dict[str, Any]]:
    """Per predictor: Kendall's tau (with p and a 95% bootstrap interval over trials, ``tau_low``
    and ``tau_high``) and Spearman's rho (with p) against ``target``, over the rows with both."""
    from scipy import stats

    from rexsearch.stats import rank_agreement

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
            if len(pair) >= MIN_INTERVAL_TRIALS:
                interval = rank_agreement(pair[name], pair[target], resamples=CALIBRATION_RESAMPLES)
                row.update(tau_low=interval.low, tau_high=interval.high)
            row.update(rho=float(rho.statistic), rho_p=float(rho.pvalue))
        out.append(row)
    return out


def tau_differences(df: pd.DataFrame, target: str, predictor: str, others: Sequence[str]) -> dict[str, Any]:
    """``tau(predictor, target) - tau(other, target)`` for each other, with a paired 95% bootstrap
    interval over the rows that have all of them (:func:`rexsearch.stats.agreement_difference`);
    only the others that vary there, and nothing below :data:`MIN_INTERVAL_TRIALS` rows."""
    from rexsearch.stats import agreement_difference

    rows = df[[predictor, *others, target]].dropna()
    out: dict[str, Any] = {}
    if len(rows) < MIN_INTERVAL_TRIALS or rows[predictor].nunique() < 2 or rows[target].nunique() < 2:
        return out
    for other in others:
        if rows[other].nunique() < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[other] = agreement_difference(
                rows[predictor], rows[other], rows[target], resamples=CALIBRATION_RESAMPLES
            )
    return out


def importances(study: Any, searched_numbers: set[int], objectives: Sequence[str]) -> dict[str, Any]:
    """Per objective: {param: importance} or an explanatory string."""
    import optuna

    trials = [t for t in study.get_trials(deepcopy=False) if t.number in searched_numbers]
    if len(trials) < MIN_IMPORTANCE_TRIALS:
        reason = f"needs at least {MIN_IMPORTANCE_TRIALS} complete searched trials, the run has {len(trials)}"
        return dict.fromkeys(objectives, reason)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        sub = optuna.create_study(directions=directions(objectives))
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
                    # PED-ANOVA treats lower as better
                    target=lambda t, i=i, s=(-1.0 if METRICS[name].maximize else 1.0): s * t.values[i],
                )
        except Exception as exc:  # importance is optional: report why it is missing
            out[name] = f"could not be computed ({type(exc).__name__}: {exc})"
    return out


def profile_configs(g: Groups, configs: dict[int, ReXNetConfig]) -> list[tuple[str, Any, bool]]:
    top = order_best_first(g.searched, g.metric, g.results.objectives).head(TOP_PROFILES)
    out = []
    for r in top.itertuples():
        if r.number in configs:
            label = f"#{r.number} ({fmt_metric(g.metric, getattr(r, g.metric))})"
            out.append((label, r, False))
    for r in g.baselines.itertuples():
        if r.number in configs:
            out.append((f"{r.baseline} ({fmt_metric(g.metric, getattr(r, g.metric))})", r, True))
    return out
