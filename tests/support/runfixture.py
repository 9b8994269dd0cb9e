"""A fake but realistic run directory: run.json and an Optuna study written directly.

The configs come from :mod:`rexsearch.principles` with their width solved to the budget,
and their costs are the real analytic ones; only the metrics (accuracy, rank) are made up,
with the paper's trends plus noise. The study holds two enqueued baselines, searched
trials, one failed, one pruned and one infeasible trial, as ``rexsearch run`` records them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from safetensors.torch import save_file

from rexsearch.config import ReXNetConfig
from rexsearch.cost import count_cost
from rexsearch.model import build_model
from rexsearch.principles import StagePlan, expand_layers_schedule, linear_schedule, stagewise_schedule
from rexsearch.results import CONSTRAINTS_ATTR, candidate_record, constraint_values, result_record
from rexsearch.rundir import RUN_FORMAT_V1, RunInfo, load_run, write_run_json
from rexsearch.space import Budget

BUDGET = 300_000_000
RESOLUTION = 224
EPOCHS = 3

SE_PLANS = {
    "late": (False, False, True, True, True, True),
    "all": (True,) * 6,
    "none": (False,) * 6,
}
DISTRIBUTIONS = {
    "n_expand": optuna.distributions.IntDistribution(1, 15),
    "slope": optuna.distributions.FloatDistribution(120.0, 240.0),
    "activation": optuna.distributions.CategoricalDistribution(["silu", "relu6", "hardswish", "relu"]),
    "se": optuna.distributions.CategoricalDistribution(["late", "all", "none"]),
}
ACT_ACC = {"silu": 0.012, "hardswish": 0.009, "relu6": 0.0, "relu": -0.003}
ACT_RANK = {"silu": 0.08, "hardswish": 0.07, "relu6": 0.0, "relu": -0.01}
SE_ACC = {"late": 0.006, "all": 0.004, "none": 0.0}

#: (n_expand, slope, activation, se) of the searched trials, in order.
SEARCHED = [
    (15, 170.0, "silu", "all"),
    (12, 200.0, "silu", "late"),
    (4, 150.0, "relu6", "none"),
    (8, 170.0, "hardswish", "all"),
    (14, 220.0, "silu", "all"),
    (2, 130.0, "relu", "none"),
    (10, 190.0, "relu6", "late"),
    (6, 240.0, "hardswish", "late"),
    (13, 160.0, "silu", "none"),
    (9, 210.0, "relu", "late"),
    (11, 175.0, "hardswish", "late"),
    (5, 185.0, "silu", "late"),
    (15, 195.0, "silu", "late"),
    (7, 140.0, "relu6", "all"),
]


def solve_width(factory: Callable[[float], ReXNetConfig], budget: int = BUDGET) -> ReXNetConfig:
    """The widest config from ``factory(width_mult)`` whose MACs stay within ``budget``."""
    lo, hi = 0.2, 3.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if count_cost(factory(mid), RESOLUTION).macs <= budget:
            lo = mid
        else:
            hi = mid
    return factory(lo)


def searched_config(n_expand: int, slope: float, activation: str, se: str, width: float | None = None):
    def factory(w: float) -> ReXNetConfig:
        return expand_layers_schedule(
            n_expand,
            width_mult=w,
            final_increment=slope,
            plan=StagePlan(se=SE_PLANS[se]),
            activation=activation,
        )

    return factory(width) if width is not None else solve_width(factory)


def _rank_per_layer(config: ReXNetConfig, level: float) -> list[dict[str, Any]]:
    out = []
    for i, b in enumerate(config.blocks):
        normalized = float(min(1.0, level + 0.01 * i))
        out.append(
            {
                "name": f"blocks.{i}",
                "in_channels": b.in_channels,
                "out_channels": b.out_channels,
                "rank": round(normalized * b.out_channels),
                "normalized": normalized,
            }
        )
    return out


def _attrs(config: ReXNetConfig, accuracy: float | None, rank: float) -> dict[str, Any]:
    """The record a real run writes: the candidate's, then the measurements of its last report."""
    record = candidate_record(config, RESOLUTION)
    report: dict[str, Any] = {
        "fvcore_macs": record["macs"],
        "rank_value": rank,
        "rank_per_layer": _rank_per_layer(config, rank - 0.08),
        "nuclear_norm": 0.4 + 0.5 * rank,
        "train_seconds": 30.0 + record["macs"] / 1e7,
        "node": "fixture-node",
    }
    if accuracy is not None:
        report["accuracy_curve"] = [accuracy * f for f in (0.62, 0.86, 1.0)][:EPOCHS]
    return {**record, **result_record(report)}


def make_run(
    run_dir: str | Path,
    objectives: Sequence[str] = ("accuracy", "rank"),
    keep_weights: Sequence[int] = (),
    seed: int = 0,
    params_budget: int | None = None,
    chance: float | None = None,
    layout: str = "current",
) -> RunInfo:
    """Write a run directory at ``run_dir``; ``keep_weights`` lists trials whose proxy weights are kept.

    ``params_budget`` adds a parameter budget to the run (trials over it are infeasible).
    ``chance`` (e.g. 0.1): every proxy accuracy sits within a point of it, as in a run whose
    proxies have not learned. ``layout="v1"`` writes run.json in the earlier format
    (``rexsearch.run/1``: the budget, seed, objectives, fidelity and storage at the top level,
    no settings record), as runs written before the current format have it.
    """
    run_dir = Path(run_dir)
    budget = Budget(BUDGET, params_budget, RESOLUTION)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{run_dir / 'study.db'}"
    objectives = list(objectives)
    command = ["rexsearch", "run", "--flops-budget", "300M", "--trials", "20", "--run-dir", str(run_dir)]
    versions = {"rexsearch": "0.1.0", "optuna": optuna.__version__, "torch": torch.__version__}
    space = {"name": "rexnet", "path": "rexsearch/space/shipped/rexnet.yaml"}
    fidelity = {"epochs": EPOCHS, "train_images": 5000, "batch_size": 128, "val_images": 1000}
    if layout == "v1":
        write_run_json(
            run_dir,
            {
                "format": RUN_FORMAT_V1,
                "command": command,
                "versions": versions,
                "seed": seed,
                "budget": {"flops": BUDGET, "params": params_budget, "resolution": RESOLUTION},
                "space": space,
                "objectives": objectives,
                "fidelity": fidelity,
                "storage": storage,
                "study_name": "rexsearch",
                "sampler": "tpe",
                "trials": 20,
            },
        )
    else:
        settings = {
            "flops_budget": BUDGET,
            "params_budget": params_budget,
            "resolution": RESOLUTION,
            "space": "rexnet",
            "objectives": objectives,
            "sampler": "tpe",
            "trials": 20,
            **fidelity,
            "seed": seed,
            "storage": storage,
            "study_name": "rexsearch",
        }
        write_run_json(
            run_dir, {"command": command, "versions": versions, "space": space, "settings": settings}
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="rexsearch", storage=storage, directions=["maximize"] * len(objectives)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objectives)
    rng = np.random.default_rng(seed)

    def add(
        config: ReXNetConfig,
        params: dict[str, Any],
        accuracy: float,
        rank: float,
        state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE,
        extra: dict[str, Any] | None = None,
    ) -> None:
        with_accuracy = "accuracy" in objectives
        if chance is not None:
            accuracy = chance + float(rng.uniform(-0.01, 0.01))
        attrs = _attrs(config, accuracy if with_accuracy else None, rank)
        attrs.update(extra or {})
        constraints = constraint_values(attrs, budget)
        metrics = {"accuracy": accuracy, "rank": rank}
        complete = state == optuna.trial.TrialState.COMPLETE
        curve = attrs.get("accuracy_curve", [])
        if state == optuna.trial.TrialState.PRUNED:
            curve = curve[:2]
            attrs["accuracy_curve"] = curve
        trial = optuna.trial.create_trial(
            state=state,
            values=[metrics[o] for o in objectives] if complete else None,
            params=params,
            distributions={k: DISTRIBUTIONS[k] for k in params},
            user_attrs=attrs,
            system_attrs={CONSTRAINTS_ATTR: constraints},
            intermediate_values=dict(enumerate(curve)) if with_accuracy else None,
        )
        study.add_trial(trial)

    def metrics(n_expand: int, slope: float, activation: str, se: str) -> tuple[float, float]:
        accuracy = (
            0.60
            + 0.004 * n_expand
            + ACT_ACC[activation]
            + SE_ACC[se]
            - 2e-6 * (slope - 190.0) ** 2
            + rng.normal(0.0, 0.004)
        )
        rank = (
            0.55 + 0.015 * n_expand + ACT_RANK[activation] + 0.0004 * (slope - 180.0) + rng.normal(0.0, 0.02)
        )
        return float(accuracy), float(min(rank, 1.0))

    linear = solve_width(lambda w: linear_schedule(width_mult=w))
    acc, rank = metrics(15, 180.0, "silu", "late")
    add(
        linear,
        {"n_expand": 15, "slope": 180.0, "activation": "silu", "se": "late"},
        acc - 0.004,
        rank,
        extra={"baseline": "rexnet-linear"},
    )
    stagewise = solve_width(lambda w: stagewise_schedule(width_mult=w))
    add(stagewise, {}, 0.625, 0.58, extra={"baseline": "mobilenetv2-stagewise"})

    for i, choice in enumerate(SEARCHED):
        config = searched_config(*choice)
        acc, rank = metrics(*choice)
        add(config, dict(zip(("n_expand", "slope", "activation", "se"), choice, strict=True)), acc, rank)
        if i == 5:
            add(
                searched_config(3, 125.0, "relu", "none"),
                {"n_expand": 3, "slope": 125.0, "activation": "relu", "se": "none"},
                0.55,
                0.5,
                state=optuna.trial.TrialState.PRUNED,
            )
        if i == 9:
            failed = searched_config(12, 230.0, "silu", "all")
            study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.FAIL,
                    params={"n_expand": 12, "slope": 230.0, "activation": "silu", "se": "all"},
                    distributions=DISTRIBUTIONS,
                    user_attrs={
                        **candidate_record(failed, RESOLUTION),
                        "error": "RuntimeError: fvcore counted 1 MACs more than the analytic model",
                    },
                )
            )
    infeasible = searched_config(14, 200.0, "silu", "late", width=1.25)
    add(
        infeasible,
        {"n_expand": 14, "slope": 200.0, "activation": "silu", "se": "late"},
        0.71,
        0.83,
    )

    info = load_run(run_dir)
    for number in keep_weights:
        trial = study.trials[number]
        proxy = ReXNetConfig.from_dict(trial.user_attrs["proxy_config"])
        torch.manual_seed(number)
        state = {k: v.contiguous() for k, v in build_model(proxy).state_dict().items()}
        path = info.weights_path(number)
        path.parent.mkdir(exist_ok=True)
        save_file(state, str(path))
    return info


def add_confirmation(
    info: RunInfo, accuracies: dict[str, Sequence[float]], epochs: int = EPOCHS, failed: int = 0
) -> None:
    """Write the run's confirmation study (``<study_name>-confirm``) as ``rexsearch confirm`` does.

    ``accuracies`` maps a label (``trial-N`` for searched trial N, in pick order, or a baseline's
    name) to one accuracy per seed; seeds are the run's seed + 1, + 2, ...
    """
    from rexsearch.confirmation import confirm_study

    study = confirm_study(info, create=True)
    trials = {t.number: t for t in info.open_study().get_trials()}
    by_baseline = {t.user_attrs.get("baseline"): t for t in trials.values() if t.user_attrs.get("baseline")}
    searched = 0
    for label, values in accuracies.items():
        source = by_baseline.get(label) or trials[int(label.split("-")[1])]
        role = "baseline" if label in by_baseline else "searched"
        searched += role == "searched"
        for i, value in enumerate(values):
            attrs = {
                **{k: source.user_attrs[k] for k in ("config", "config_hash", "macs", "params")},
                "source_trial": source.number,
                "label": label,
                "role": role,
                "pick_rank": searched if role == "searched" else None,
                "seed": int(info.data.get("seed") or 0) + 1 + i,
                "epochs": epochs,
                "train_seconds": 12.0,
            }
            study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.COMPLETE, values=[value], user_attrs=attrs
                )
            )
    for _ in range(failed):
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.FAIL,
                user_attrs={"label": "trial-0", "error": "RuntimeError: x"},
            )
        )
