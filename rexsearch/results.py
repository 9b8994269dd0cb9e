"""What a finished run means: the trial record, feasibility, the Pareto front, "best", the table.

This is the one definition of each. The search writes trial records through
:func:`candidate_record` and :func:`result_record` (so does the test fixture);
``rexsearch run``'s closing table, the report, ``export`` and ``train RUN_DIR --trial N``
read them through :class:`RunResults`.

* **Record**: the user attributes of an Optuna trial (:class:`TrialRecord`, design.md's
  list): the decoded config and its cost when the candidate is drawn, the measurements
  when the trial ends.
* **Feasible**: the trial's recorded MACs (when the run has a MACs budget), parameters (a
  parameter budget) and latency (a latency budget: the latency measured on the worker, else
  the predicted one, :func:`judged_latency`) are within the run's budget
  (:func:`constraint_values`, all <= 0). A trial without recorded costs has no feasibility
  (``None``).
* **Front**: among COMPLETE, feasible trials, the non-dominated ones over the run's
  objectives (accuracy and rank maximised, latency minimised); a single objective is paired
  with fewer MACs, so a one-objective run still has a front of trade-offs (:func:`front_keys`).
* **Best** (``--pick``): among the feasible trials (the winner is always on the front), the
  highest accuracy (default when the run measured it), the highest rank (default for
  rank-only runs), the lowest latency (``latency``), or ``balanced``: each front objective
  replaced by its rank among the feasible trials divided by their number, largest sum wins;
  ties go to the other objectives, then to fewer MACs, then to the lower trial number
  (:func:`order_best_first`). The verdict's best searched trial, ``confirm``'s targets and
  ``export --trial best`` all follow this one order; the "best searched" ones skip baselines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from rexsearch.config import ReXNetConfig
from rexsearch.confirmation import Confirmation, confirm_study
from rexsearch.cost import count_cost
from rexsearch.errors import ConfigError, UserError
from rexsearch.proxy import PROXY_RESOLUTION, proxy_config
from rexsearch.rundir import RUN_JSON, RunInfo, load_run

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import pandas as pd

    from rexsearch.space import Budget

OBJECTIVES = ("accuracy", "rank", "latency")
#: What ``rexsearch run`` optimises unless told: proxy accuracy alone. Rank is still measured and
#: recorded for every trial, but on real images it did not rank networks better than params or
#: MACs beyond noise (reports/fidelity/README.md), so it is no longer a default objective.
DEFAULT_OBJECTIVES = ("accuracy",)
PICKS = ("accuracy", "rank", "latency", "balanced")
#: Optuna samplers ``rexsearch run --sampler`` offers (:func:`rexsearch.search.study.make_sampler`).
SAMPLERS = ("tpe", "nsga2", "gp", "random")
#: How the ``rank`` objective is measured (:func:`rexsearch.rank.measure_rank`'s ``protocol``).
RANK_PROTOCOLS: dict[str, str] = {
    "batchnorm": "Gaussian images, BatchNorm on batch statistics, rank at rtol 0.03",
    "paper": "U[0,1) images, BatchNorm in eval mode (a fresh network's is the identity), strict rank",
}
#: The default, chosen by ``benchmarks/bench_rank_protocols.py``: the protocol whose rank
#: correlated better with proxy accuracy (numbers in reports/rank-study/README.md).
DEFAULT_RANK_PROTOCOL = "batchnorm"

BEST_DEFINITION = (
    "'best' is the trial with the highest proxy accuracy within the budget, always on the feasible "
    "Pareto front (--pick rank: the highest feature rank; --pick latency: the lowest latency; "
    "--pick balanced: the best sum of rank-normalised objectives); ties go to the other objectives, "
    "then to fewer MACs, then to the lower trial number."
)


# ---------------------------------------------------------------------------- the record
class TrialRecord(TypedDict, total=False):
    """A trial's user attributes (design.md), as the search writes them."""

    # written when the candidate is decoded (before the trial runs)
    config: dict[str, Any]
    config_hash: str
    macs: int
    params: int
    fvcore_total: int
    proxy_config: dict[str, Any]
    proxy_macs: int
    expand_layers: int
    channels: str
    latency_ms: float  # predicted by the run's latency table (latency budgets only)
    # written when the trial ends
    fvcore_macs: int
    rank: float
    rank_per_layer: list[dict[str, Any]]
    nuclear_norm: float
    accuracy_curve: list[float]
    train_seconds: float
    node: str
    error: str
    latency_measured_ms: float  # median measured on the worker, when it is the table's device
    latency_note: str  # where the latency was measured, or why it was not
    # bookkeeping of the search
    baseline: str
    interrupted: bool
    rerun_of: int
    # confirmation trials (the sibling study ``<study_name>-confirm``)
    source_trial: int
    label: str
    role: str
    pick_rank: int
    seed: int
    epochs: int


#: Keys of a trial's final report (worker side) -> record keys. ``rank`` is also the objective's
#: name in the report, so the measured value travels as ``rank_value``.
_RESULT_KEYS = {
    "rank_value": "rank",
    "rank_per_layer": "rank_per_layer",
    "nuclear_norm": "nuclear_norm",
    "fvcore_macs": "fvcore_macs",
    "accuracy_curve": "accuracy_curve",
    "train_seconds": "train_seconds",
    "node": "node",
    "latency_measured_ms": "latency_measured_ms",
    "latency_note": "latency_note",
}
#: Optuna system attribute optuna-dashboard reads constraints from (see findings.md).
CONSTRAINTS_ATTR = "constraints"
INTERRUPTED_ERROR = "interrupted: the search stopped while it ran"
#: Longest error text kept on a trial.
MAX_ERROR_CHARS = 2000


def candidate_record(
    config: ReXNetConfig, resolution: int, latency_ms: float | None = None, num_classes: int = 100
) -> TrialRecord:
    """The record of a decoded candidate: its config, its cost at ``resolution``, its proxy (with
    ``num_classes`` outputs: the data set's classes) and (with a latency budget) its predicted
    latency."""
    cost = count_cost(config, resolution)
    proxy = proxy_config(config, num_classes=num_classes)
    record = TrialRecord(
        config=config.to_dict(),
        config_hash=config.short_hash(),
        macs=cost.macs,
        params=cost.params,
        fvcore_total=cost.fvcore_total,
        proxy_config=proxy.to_dict(),
        proxy_macs=count_cost(proxy, PROXY_RESOLUTION).macs,
        expand_layers=config.expand_layers,
        channels=" ".join(map(str, config.out_channels)),
    )
    if latency_ms is not None:
        record["latency_ms"] = float(latency_ms)
    return record


def result_record(result: Mapping[str, Any]) -> TrialRecord:
    """The measurements in a trial's last report, as record fields (absent ones left out)."""
    return TrialRecord(
        **{key: result[k] for k, key in _RESULT_KEYS.items() if result.get(k) is not None}  # type: ignore[typeddict-item]
    )


def error_text(message: str) -> str:
    return str(message)[:MAX_ERROR_CHARS]


def judged_latency(record: Mapping[str, Any]) -> float | None:
    """The latency a run judges a trial by: measured on the worker when it was, else predicted."""
    measured = record.get("latency_measured_ms")
    return float(measured) if measured is not None else record.get("latency_ms")


def constraint_values(record: Mapping[str, Any], budget: Budget) -> list[float] | None:
    """``[macs - budget]`` (with a MACs budget), ``params - params budget`` (with a parameter
    budget), ``latency - latency budget`` (with a latency budget: :func:`judged_latency` against
    the budget itself, the margin only steers the solver): feasible when all are <= 0.

    ``None`` when the record has no costs (a candidate that was never decoded).
    """
    macs, params = record.get("macs"), record.get("params")
    if macs is None:
        return None
    values = [] if budget.macs is None else [float(macs - budget.macs)]
    if budget.params is not None:
        values.append(float((params if params is not None else math.inf) - budget.params))
    if budget.latency_ms is not None:
        latency = judged_latency(record)
        values.append(float((latency if latency is not None else math.inf) - budget.latency_ms))
    return values


def is_feasible(record: Mapping[str, Any], budget: Budget) -> bool | None:
    """Whether the record's costs are within ``budget`` (``None``: no costs recorded)."""
    values = constraint_values(record, budget)
    return None if values is None else all(v <= 0 for v in values)


# ---------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """How a measured quantity is named, shown and compared, everywhere it appears."""

    key: str
    label: str
    kind: str  # "fraction" (shown as %), "score" (4 decimals), "count", "seconds", "ms"
    maximize: bool | None = None  # None: not compared

    def format(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        try:
            import pandas as pd

            if pd.isna(value):
                return "n/a"
        except (TypeError, ValueError):
            pass
        if self.kind == "fraction":
            return f"{100 * float(value):.2f}%"
        if self.kind == "count":
            return f"{int(value):,}"
        if self.kind == "seconds":
            return f"{float(value):.1f} s"
        if self.kind == "ms":
            return f"{float(value):.2f} ms"
        return f"{float(value):.4f}"

    def format_diff(self, diff: float) -> str:
        if self.kind == "fraction":
            return f"{100 * diff:+.2f} points"
        if self.kind == "ms":
            return f"{diff:+.2f} ms"
        return f"{diff:+.4f} {self.key}"


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("accuracy", "proxy accuracy", "fraction", maximize=True),
        Metric("rank", "normalized feature rank", "score", maximize=True),
        Metric("nuclear_norm", "nuclear norm of the final feature", "score"),
        Metric("macs", "MACs", "count", maximize=False),
        Metric("params", "parameters", "count", maximize=False),
        Metric("proxy_macs", f"proxy MACs at {PROXY_RESOLUTION}x{PROXY_RESOLUTION}", "count"),
        Metric("fvcore_macs", "fvcore's conv+linear MACs of the target network", "count"),
        Metric("train_seconds", "proxy training seconds", "seconds"),
        Metric("latency", "latency (measured, else predicted)", "ms", maximize=False),
        Metric("latency_ms", "predicted latency", "ms"),
        Metric("latency_measured_ms", "measured latency", "ms"),
    )
}


def metric(key: str) -> Metric:
    return METRICS[key]


# ---------------------------------------------------------------------------- design summary
def growth_slope(config: ReXNetConfig) -> float:
    """Least-squares slope of the block output widths over the block index (channels per block)."""
    import numpy as np

    widths = np.asarray(config.out_channels, dtype=float)
    if len(widths) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(widths)), widths, 1)[0])


def nonlinearity(config: ReXNetConfig) -> str:
    """The nonlinearity after the expand convs (``mixed`` when blocks differ)."""
    names = {config.block_activation(b) for b in config.blocks if b.has_expand}
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


def record_config(record: Mapping[str, Any], key: str = "config") -> ReXNetConfig | None:
    """The config stored under ``key`` in a record, or ``None`` when absent or invalid."""
    try:
        return ReXNetConfig.from_dict(record[key])
    except (KeyError, UserError, TypeError):
        return None


# ---------------------------------------------------------------------------- Pareto
def pareto_mask(points: Any, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` (one column per objective)."""
    import numpy as np

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


def front_keys(objectives: Sequence[str]) -> tuple[list[str], list[bool]]:
    """Columns (and whether each is maximised: :attr:`Metric.maximize`) that define a run's front.

    The objectives when there are several; a single objective is paired with MACs (fewer
    is better), so the front is not a single point.
    """
    maximize = [bool(METRICS[o].maximize) for o in objectives]
    if len(objectives) > 1:
        return list(objectives), maximize
    return [objectives[0], "macs"], [maximize[0], False]


def order_best_first(frame: pd.DataFrame, pick: str, objectives: Sequence[str]) -> pd.DataFrame:
    """``frame`` best first by ``pick``: the one order behind "best" everywhere (the verdict's best
    searched trial, the front's first row, ``export --trial best``, the configs ``confirm`` trains).

    ``pick`` is a metric column, or ``balanced`` (the sum of the objectives' rank-normalised
    values within ``frame``). Ties go to the other objectives in their directions, then to fewer
    MACs, then to the lower trial number, so the first row is on the Pareto front and the order
    never depends on the row order it was given.
    """
    import numpy as np
    from scipy.stats import rankdata

    keys, maximize = front_keys(objectives)
    columns: list[str] = []
    ascending: list[bool] = []
    if pick == "balanced":
        score = np.zeros(len(frame))
        for key, up in zip(keys, maximize, strict=True):
            values = frame[key].to_numpy(dtype=float)
            score += rankdata(values if up else -values, method="average") / max(len(frame), 1)
        frame = frame.assign(_balanced=score)
        columns, ascending = ["_balanced"], [False]
    else:
        columns, ascending = [pick], [not METRICS[pick].maximize]
    for key, up in zip(keys, maximize, strict=True):
        if key not in columns and key != "macs":
            columns.append(key)
            ascending.append(not up)
    ordered = frame.sort_values([*columns, "macs", "number"], ascending=[*ascending, True, True])
    return ordered.drop(columns=["_balanced"], errors="ignore")


def directions(objectives: Sequence[str]) -> list[str]:
    """Optuna's study directions for the objectives (``maximize``, or ``minimize`` for latency)."""
    return ["maximize" if METRICS[o].maximize else "minimize" for o in objectives]


# ---------------------------------------------------------------------------- the table
#: Columns of trials.csv after ``number``, ``state``, ``value_<objective>`` and ``param_<name>``.
TABLE_COLUMNS = (
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
    "latency_ms",
    "latency_measured_ms",
    "latency",
    "dataset",
)
_INT_COLUMNS = ("macs", "params", "proxy_macs", "fvcore_macs", "fvcore_total", "expand_layers", "depth")
_FLOAT_COLUMNS = (
    "rank",
    "nuclear_norm",
    "accuracy",
    "slope",
    "train_seconds",
    "latency_ms",
    "latency_measured_ms",
    "latency",
)


def _row(
    trial: optuna.trial.FrozenTrial, objectives: Sequence[str], budget: Budget, dataset: str
) -> dict[str, Any]:
    attrs = trial.user_attrs
    row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
    values = trial.values or [None] * len(objectives)
    for name, value in zip(objectives, values, strict=False):
        row[f"value_{name}"] = value
    for name, value in trial.params.items():
        row[f"param_{name}"] = value
    config = record_config(attrs)
    curve = attrs.get("accuracy_curve") or []
    accuracy = row.get("value_accuracy")
    if accuracy is None and curve:
        accuracy = curve[-1]  # a pruned trial: its last reported epoch
    fvcore_total = attrs.get("fvcore_total")
    if fvcore_total is None and config is not None:
        fvcore_total = count_cost(config, budget.resolution).fvcore_total
    row.update(
        config_hash=attrs.get("config_hash") or (config.short_hash() if config else None),
        macs=attrs.get("macs"),
        params=attrs.get("params"),
        proxy_macs=attrs.get("proxy_macs"),
        fvcore_macs=attrs.get("fvcore_macs"),
        fvcore_total=fvcore_total,
        rank=attrs.get("rank", row.get("value_rank")),
        nuclear_norm=attrs.get("nuclear_norm"),
        accuracy=accuracy,
        expand_layers=config.expand_layers if config else None,
        slope=growth_slope(config) if config else None,
        nonlinearity=nonlinearity(config) if config else None,
        se=se_summary(config) if config else None,
        depth=config.depth if config else None,
        baseline=attrs.get("baseline") or "",
        feasible=is_feasible(attrs, budget),
        error=attrs.get("error") or "",
        train_seconds=attrs.get("train_seconds"),
        latency_ms=attrs.get("latency_ms"),
        latency_measured_ms=attrs.get("latency_measured_ms"),
        latency=judged_latency(attrs),
        dataset=dataset,
    )
    return row


def trials_table(
    trials: Sequence[optuna.trial.FrozenTrial],
    objectives: Sequence[str],
    budget: Budget,
    dataset: str | None = None,
) -> pd.DataFrame:
    """One row per trial (trials.csv): number, state, ``value_<objective>``, ``param_<name>``,
    costs, metrics, design summary (expand layers, growth slope, nonlinearity, SE), baseline,
    feasible, error, latency, and the data set the proxies trained on (empty for rank-only runs)."""
    import pandas as pd

    rows = [_row(t, objectives, budget, dataset or "") for t in trials]
    lead = ["number", "state"] + [f"value_{o}" for o in objectives]
    param_cols = sorted({k for r in rows for k in r if k.startswith("param_")})
    frame = pd.DataFrame(rows, columns=lead + param_cols + list(TABLE_COLUMNS))
    for col in _INT_COLUMNS:
        frame[col] = pd.array([None if pd.isna(v) else int(v) for v in frame[col]], dtype="Int64")
    frame["feasible"] = pd.array(list(frame["feasible"]), dtype="boolean")
    for col in [*_FLOAT_COLUMNS, *(f"value_{o}" for o in objectives)]:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame


# ---------------------------------------------------------------------------- a run
_STATE_WORDS = {"FAIL": "failed", "COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "running"}


def describe_state(trial: optuna.trial.FrozenTrial) -> str:
    """The trial's state in words, with the error the run recorded: ``pruned: infeasible: ...``."""
    state = _STATE_WORDS.get(trial.state.name, trial.state.name.lower())
    error = trial.user_attrs.get("error")
    if not error:
        return state
    error = " ".join(str(error).split())  # one line, whatever the worker reported
    return f"{state}: {error[:197] + '...' if len(error) > 200 else error}"


def trial_number(text: str | int, expected: str = "'best' or a trial number") -> int:
    """A ``--trial`` value as a trial number; a UserError saying it must be ``expected`` otherwise."""
    try:
        number = int(text)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise UserError(f"--trial must be {expected}, got {text!r}")
    return number


@dataclass(frozen=True)
class RunResults:
    """A run's trials read once from its study, and everything derived from them."""

    run: RunInfo
    trials: tuple[Any, ...]
    study: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, run: RunInfo | str | Path, study: optuna.Study | None = None) -> RunResults:
        info = run if isinstance(run, RunInfo) else load_run(run)
        study = study if study is not None else info.open_study()
        names = study.metric_names  # set by every run; None in a study made elsewhere
        if names is not None and list(names) != list(info.objectives):
            raise UserError(
                f"{info.path / RUN_JSON} names the objectives {','.join(info.objectives)} but its study "
                f"records {','.join(names)}; restore run.json from a backup"
            )
        return cls(info, tuple(study.get_trials(deepcopy=False)), study)

    @property
    def objectives(self) -> list[str]:
        return self.run.objectives

    @property
    def budget(self) -> Budget:
        return self.run.budget

    @property
    def primary(self) -> str:
        """``accuracy`` when the run measured it, else ``rank`` (a rank-only run)."""
        return "accuracy" if "accuracy" in self.objectives else "rank"

    @cached_property
    def table(self) -> pd.DataFrame:
        """The trials table (:func:`trials_table`), as trials.csv holds it."""
        dataset = self.run.dataset
        return trials_table(self.trials, self.objectives, self.budget, dataset and dataset.get("dataset"))

    @cached_property
    def feasible(self) -> pd.DataFrame:
        """COMPLETE trials within the budget with every front column measured."""
        keys, _ = front_keys(self.objectives)
        t = self.table
        done = t[(t["state"] == "COMPLETE") & t[keys].notna().all(axis=1)]
        return done[done["feasible"].fillna(False).astype(bool)]

    @cached_property
    def front(self) -> pd.DataFrame:
        """The feasible Pareto front, best first (:func:`order_best_first` by the primary metric)."""
        keys, maximize = front_keys(self.objectives)
        pool = self.feasible
        if not pool.empty:
            pool = pool[pareto_mask(pool[keys].to_numpy(dtype=float), maximize)]
        return order_best_first(pool, self.primary, self.objectives)

    def trial(self, number: int) -> Any:
        """Trial ``number``; a UserError naming the numbers the run has."""
        for t in self.trials:
            if t.number == number:
                return t
        numbers = f"0 to {max(t.number for t in self.trials)}" if self.trials else "none"
        raise UserError(f"{self.run.path} has no trial {number} (trial numbers: {numbers})")

    def _check_pick(self, pick: str) -> None:
        if pick not in PICKS:
            raise UserError(f"--pick must be one of {', '.join(PICKS)}, got {pick!r}")
        if pick == "accuracy" and "accuracy" not in self.objectives:
            raise UserError(
                f"{self.run.path} is a rank-only run (no accuracy measured); use --pick rank or balanced"
            )
        if pick == "latency" and self.budget.latency_ms is None:
            raise UserError(
                f"{self.run.path} has no latency budget (no latency recorded); use another --pick"
            )

    def _ordered(self, pick: str) -> pd.DataFrame:
        """The feasible trials best first by ``pick`` (:func:`order_best_first`). A pick that is
        not one of the front's objectives (``--pick rank`` on an accuracy-only run, ``latency``
        as a budget only) orders the front first, so that "best" is always a point of it."""
        import pandas as pd

        keys, _ = front_keys(self.objectives)
        if pick == "balanced" or pick in keys:
            return order_best_first(self.feasible, pick, self.objectives)
        front = order_best_first(self.front, pick, self.objectives)
        rest = self.feasible[~self.feasible["number"].isin(front["number"])]
        return pd.concat([front, order_best_first(rest, pick, self.objectives)])

    def best(self, pick: str | None = None) -> tuple[Any, str]:
        """The best trial by ``pick`` (module docstring) and a sentence saying why, naming a
        baseline when one is best. The first of :func:`order_best_first` over the feasible
        trials, which is always on the Pareto front."""
        pick = pick or self.primary
        self._check_pick(pick)
        if self.front.empty:
            raise UserError(
                f"{self.run.path} has no complete trial within the budget; export one with --trial N instead"
            )
        order = self._ordered(pick)
        first = order.iloc[0]
        number = int(first["number"])
        if pick == "balanced":
            keys, _ = front_keys(self.objectives)
            what = f"the best sum of rank-normalised {' and '.join(keys)} within the budget"
        else:
            up = bool(METRICS[pick].maximize)
            size = f"{len(order)} trial{'s' if len(order) > 1 else ''}"
            what = f"the {'highest' if up else 'lowest'} {pick} within the budget ({size})"
        baseline = f", the baseline {first['baseline']}" if first["baseline"] else ""
        why = f"trial {number}{baseline}: {what}, ties to the other objectives, then fewer MACs"
        return self.trial(number), why

    def ranked(self, pick: str | None = None) -> list[int]:
        """Feasible searched trials (no baselines), best first by :func:`order_best_first` (the
        order ``best`` and the report's verdict use), one per config hash."""
        pick = pick or self.primary
        self._check_pick(pick)
        order = self._ordered(pick)
        numbers = [int(n) for n in order.loc[order["baseline"] == "", "number"]]
        hashes = dict(zip(self.table["number"], self.table["config_hash"], strict=True))
        seen: set[Any] = set()
        out = []
        for n in numbers:
            if hashes.get(n) not in seen:
                seen.add(hashes.get(n))
                out.append(n)
        return out

    @cached_property
    def confirmation(self) -> Confirmation:
        """The run's confirmation trainings (the sibling study), empty when there are none."""
        study = confirm_study(self.run, create=False)
        return Confirmation(tuple(study.get_trials(deepcopy=False)) if study is not None else ())

    def select(self, which: str | int = "best", pick: str | None = None) -> tuple[Any, str]:
        """``--trial best|N``: the trial and why; a numbered trial must be COMPLETE or PRUNED."""
        if which == "best":
            return self.best(pick)
        number = trial_number(which)
        chosen = self.trial(number)
        state = chosen.state.name
        if state == "FAIL":
            error = chosen.user_attrs.get("error", "no error recorded")
            raise UserError(f"trial {number} failed ({error}); export a complete or pruned trial")
        if state not in ("COMPLETE", "PRUNED"):
            raise UserError(f"trial {number} is {state.lower()}, not finished; wait for it or pick another")
        return chosen, f"trial {number}, chosen by number ({state.lower()})"

    def config(self, trial: Any, key: str = "config", purpose: str = "exported") -> ReXNetConfig:
        """The config in the trial's record under ``key`` (``config``, the target network the budget
        applies to, or ``proxy_config``), named ``RUN-trial-N`` (or ``RUN-BASELINE``); a UserError
        naming the trial's state when it has none, ending with "it cannot be ``purpose``"."""
        attrs = trial.user_attrs
        if key not in attrs:
            raise UserError(
                f"trial {trial.number} has no {key} attribute ({describe_state(trial)}); "
                f"it cannot be {purpose}"
            )
        try:
            config = ReXNetConfig.from_dict(attrs[key])
        except ConfigError as exc:
            raise UserError(f"trial {trial.number}'s {key} is invalid: {exc}") from None
        label = attrs.get("baseline") or f"trial-{trial.number}"
        return replace(config, name=f"{self.run.path.name}-{label}")


__all__ = [
    "BEST_DEFINITION",
    "DEFAULT_OBJECTIVES",
    "METRICS",
    "OBJECTIVES",
    "PICKS",
    "SAMPLERS",
    "Metric",
    "RunResults",
    "TrialRecord",
    "candidate_record",
    "constraint_values",
    "describe_state",
    "directions",
    "front_keys",
    "is_feasible",
    "judged_latency",
    "pareto_mask",
    "result_record",
    "trials_table",
]
