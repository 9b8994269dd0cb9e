"""`rexsearch run` and `rexsearch space` under a latency budget: refusals, records, feasibility, front.

The table is built here at 32x32 with two grid points per axis on the baselines' shapes (a few
seconds); budgets are set from the table's own predictions, so no assertion depends on how
fast this machine is.
"""

from __future__ import annotations

import json
import math
import sys

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from rexsearch.cli import main
from rexsearch.latency import build_table, load_table
from rexsearch.principles import linear_schedule, stagewise_schedule
from rexsearch.results import (
    RunResults,
    constraint_values,
    front_keys,
    is_feasible,
    judged_latency,
    trials_table,
)
from rexsearch.rundir import LATENCY_TABLE, load_run
from rexsearch.space import Budget, baseline_candidate

RES = "32"


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    """A coarse one-thread table at 32x32 covering the baselines and the shipped rexnet space."""
    shapes = [linear_schedule(width_mult=w) for w in (0.1, 0.5, 2.0)]
    shapes += [stagewise_schedule(width_mult=w) for w in (0.1, 0.5, 2.0)]
    table = build_table(
        threads=1,
        resolution=32,
        shapes=shapes,
        calibration=shapes[:2],
        points=2,
        warmup=1,
        repeats=1,
        se_ratios=(12,),
    )
    path = tmp_path_factory.mktemp("table") / "cpu-torch.json"
    table.save(path)
    return path


@pytest.fixture(scope="module")
def budget_ms(table_file) -> float:
    """A latency budget both baselines fit: the slower of the two at width 0.35, plus 10%."""
    table = load_table(table_file)
    return 1.1 * max(
        table.predict(linear_schedule(width_mult=0.35), 32),
        table.predict(stagewise_schedule(width_mult=0.35), 32),
    )


def _other_device(table_file, tmp_path):
    data = json.loads(table_file.read_text())
    data["environment"].update(device_name="Other CPU 9000", runtime_version="0.1")
    path = tmp_path / "other.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the command gets as far as starting or joining Ray."""
    from rexsearch import search

    def refuse(address):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(search, "ensure_ray", refuse)


def test_run_refuses_a_table_from_another_device_before_ray_and_run_json(
    table_file, tmp_path, capsys, no_ray
):
    run_dir = tmp_path / "run"
    argv = ["run", "--latency-budget", "50ms", "--latency-table", str(_other_device(table_file, tmp_path))]
    code = main([*argv, "--resolution", RES, "--objectives", "rank", "--run-dir", str(run_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Other CPU 9000" in err and "torch 0.1" in err and "differ" in err
    assert not run_dir.exists()


def test_run_refuses_a_tiny_latency_budget_naming_the_smallest_reachable(
    table_file, tmp_path, capsys, no_ray
):
    run_dir = tmp_path / "run"
    budget = ["--latency-budget", "0.001ms", "--latency-table", str(table_file), "--resolution", RES]
    code = main(["run", *budget, "--objectives", "rank", "--run-dir", str(run_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "the smallest reachable latency is" in err and "ms predicted" in err
    assert not run_dir.exists()


def test_run_with_a_measured_margin_times_candidates_then_records_the_margin(
    table_file, budget_ms, tmp_path, capsys, monkeypatch, no_ray
):
    import types

    import rexsearch.cli.search as cli_search
    import rexsearch.latency.margin as margin_module
    from rexsearch.search import settings_from_run, start_run

    table = load_table(table_file)
    timed = []

    def slower(config, resolution, env, warmup, repeats):  # 1.25x the prediction: a 20% margin
        timed.append(config)
        return types.SimpleNamespace(median_ms=1.25 * table.predict(config, resolution))

    seen = {}

    def execute(settings, view, **kwargs):  # stands in for the search: what it would be given
        seen["settings"] = settings
        return 0

    monkeypatch.setattr(margin_module, "measure_latency", slower)
    monkeypatch.setattr(cli_search, "execute_run", execute)
    monkeypatch.setattr(cli_search, "say_drift", lambda budget, view: None)  # times networks too
    budget = ["--latency-budget", f"{budget_ms}ms", "--latency-table", str(table_file), "--resolution", RES]
    argv = ["run", *budget, "--latency-margin", "measure", "--objectives", "rank"]
    assert main([*argv, "--run-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("latency margin ")]
    assert len(said) == 1 and said[0].startswith("latency margin 20.0%: 20 candidates of rexnet")
    assert len(timed) == 20
    settings = seen["settings"]
    assert settings.latency_margin == pytest.approx(0.2)
    assert settings.latency_margin_ratios == pytest.approx([1.25] * 20)
    # run.json keeps the margin and the ratios it came from; a resumed run reads them back
    start_run(settings, argv)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["settings"]["latency_margin"] == pytest.approx(0.2)
    assert recorded["settings"]["latency_margin_ratios"] == pytest.approx([1.25] * 20)
    run = load_run(tmp_path / "run")
    assert run.budget.latency_margin == pytest.approx(0.2)
    assert settings_from_run(run).latency_margin_ratios == pytest.approx((1.25,) * 20)
    # a budget the space cannot meet, or a bad setting, is refused before anything is timed
    tiny = ["--latency-budget", "0.001ms", "--latency-table", str(table_file), "--resolution", RES]
    code = main(["run", *tiny, "--latency-margin", "measure", "--run-dir", str(tmp_path / "r2"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "the smallest reachable latency is" in err and "latency margin" not in err
    code = main([*argv, "--objectives", "speed", "--run-dir", str(tmp_path / "r3")])
    assert code == 2 and "--objectives must be" in capsys.readouterr().err
    assert len(timed) == 20


def test_latency_objective_needs_a_latency_budget(tmp_path, capsys):
    code = main(["run", "--flops-budget", "10M", "--objectives", "rank,latency", "--run-dir", str(tmp_path)])
    assert code == 2
    assert "--objectives latency needs a latency budget" in capsys.readouterr().err


def test_space_command_takes_the_latency_flags(table_file, budget_ms, capsys):
    argv = ["space", "rexnet", "--latency-budget", f"{budget_ms}ms", "--latency-table", str(table_file)]
    assert main([*argv, "--resolution", RES, "--channel-multiple", "8", "--sample", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["latency_ms"] <= budget_ms
        widths = [row["config"]["stem_channels"], *(b["out_channels"] for b in row["config"]["blocks"])]
        assert all(w % 8 == 0 for w in widths)
    assert main([*argv, "--resolution", RES, "--sample", "2"]) == 0
    out = capsys.readouterr().out
    assert "predicted ms" in out and f"under {budget_ms:g} ms predicted" in out


def test_constraints_judge_the_measured_latency_first():
    budget = Budget(latency_ms=10.0, latency_table=object(), resolution=32)  # type: ignore[arg-type]
    record = {"macs": 1000, "params": 10, "latency_ms": 9.0}
    assert constraint_values(record, budget) == [-1.0] and is_feasible(record, budget)
    measured = {**record, "latency_measured_ms": 11.5}
    assert judged_latency(measured) == 11.5
    assert constraint_values(measured, budget) == [1.5] and not is_feasible(measured, budget)
    both = Budget(macs=2000, latency_ms=10.0, latency_table=object(), resolution=32)  # type: ignore[arg-type]
    assert constraint_values(measured, both) == [-1000.0, 1.5]
    assert not is_feasible({"macs": 1000}, budget)  # no latency recorded under a latency budget


def test_a_trial_measured_over_budget_is_recorded_infeasible():
    from rexsearch.search import record_outcome

    budget = Budget(latency_ms=10.0, latency_table=object(), resolution=32)  # type: ignore[arg-type]
    study = optuna.create_study(directions=["maximize", "minimize"])
    for measured, feasible in ((9.5, True), (10.5, False)):
        trial = study.ask()
        trial.set_user_attr("macs", 1000)
        trial.set_user_attr("latency_ms", 9.0)
        result = {"final": True, "rank": 0.5, "latency": measured, "latency_measured_ms": measured}
        assert record_outcome(study, trial._trial_id, result, False, ("rank", "latency"), budget, False) == (
            TrialState.COMPLETE
        )
        frozen = study.get_trials()[-1]
        assert frozen.user_attrs["latency_measured_ms"] == measured
        assert frozen.values == [0.5, measured]
        assert (frozen.system_attrs["constraints"][0] <= 0) == feasible
        assert is_feasible(frozen.user_attrs, budget) == feasible


def test_live_view_shows_the_lowest_latency(capsys):
    from types import SimpleNamespace

    from rexsearch.cli.status import StatusLine
    from rexsearch.search import LiveView, Progress

    progress = Progress(total=3)
    callback = LiveView(progress, None, [0])
    for latency in (7.5, 5.25, 9.0):
        trial = SimpleNamespace(
            last_result={"final": True, "rank": 0.5, "latency": latency}, status="TERMINATED"
        )
        callback.on_trial_complete(0, [trial], trial)
    assert progress.best_latency == 5.25 and progress.best_rank == 0.5
    StatusLine(quiet=False)(progress)
    assert "latency 5.25 ms" in capsys.readouterr().err


def test_front_minimises_latency():
    assert front_keys(["accuracy", "latency"]) == (["accuracy", "latency"], [True, False])
    assert front_keys(["latency"]) == (["latency", "macs"], [False, False])


def test_search_under_a_latency_budget_records_and_reports_latency(
    table_file, budget_ms, tmp_path, capsys, ray_session
):
    run_dir = tmp_path / "run"
    budget = ["--latency-budget", f"{budget_ms:.4f}ms", "--latency-table", str(table_file)]
    budget += ["--latency-margin", "0.05", "--resolution", RES]
    runs = ["--objectives", "rank,latency", "--trials", "3", "--cpus-per-trial", "1"]
    code = main(["run", *budget, *runs, "--run-dir", str(run_dir), "--quiet"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    assert "latency" in out.split("Pareto front (", 1)[1].splitlines()[1]  # a column of the printed front

    info = load_run(run_dir)
    settings, table = info.settings, info.data["latency_table"]
    assert settings["flops_budget"] is None and settings["latency_budget_ms"] == pytest.approx(
        budget_ms, rel=1e-4
    )
    assert table["path"] == str(table_file.resolve())
    assert table["environment"] == load_table(table_file).environment.to_dict()
    assert (run_dir / LATENCY_TABLE).is_file()
    study = info.open_study()
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]

    trials = study.get_trials()
    assert len(trials) == 3
    for t in trials:
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("error")
        attrs = t.user_attrs
        # the budget as the run got it (the flag carries 4 decimals), less the 5% margin
        assert attrs["latency_ms"] <= settings["latency_budget_ms"] * (1 - settings["latency_margin"])
        assert attrs["latency_measured_ms"] > 0 and "measured on the worker" in attrs["latency_note"]
        assert t.values[1] == pytest.approx(attrs["latency_measured_ms"])  # the objective is the measurement
        over = attrs["latency_measured_ms"] - info.latency_budget_ms
        assert t.system_attrs["constraints"] == [pytest.approx(over)]

    frame = pd.read_csv(run_dir / "trials.csv")
    assert {"latency_ms", "latency_measured_ms", "latency"} <= set(frame.columns)
    assert frame["latency"].tolist() == pytest.approx(frame["latency_measured_ms"].tolist())
    assert 'id="fig-pareto-latency"' in (run_dir / "report.html").read_text()

    from rexsearch.search import settings_from_run

    resumed = settings_from_run(info)
    assert resumed.latency_table_path() == run_dir / LATENCY_TABLE  # resume reads the run's copy
    assert resumed.budget.latency_ms == info.latency_budget_ms and resumed.budget.latency_table is not None
    results = RunResults.load(run_dir)
    assert results.budget.latency_table is not None
    feasible = results.table[results.table["feasible"].fillna(False).astype(bool)]
    if not feasible.empty:  # a measurement may land over the budget on a loaded machine
        best, why = results.best("latency")
        assert best.number == int(feasible.sort_values(["latency", "macs"]).iloc[0]["number"])
        assert "lowest latency" in why
    card_dir = tmp_path / "card"
    assert main(["export", str(run_dir), "--trial", "0", "--out", str(card_dir)]) == 0
    card = (card_dir / "README.md").read_text()
    assert "ms predicted" in card and "ms measured (median) on cpu" in card and "ms latency" in card


def _trial_on_another_device(tune_config, split=None, job=None):
    """A worker that is not the table's device: it records why it did not time the network."""
    from dataclasses import replace

    from rexsearch.search import trial_function

    other = {**job.latency_environment, "device_name": "Other CPU 9000"}
    trial_function(tune_config, split, replace(job, latency_environment=other))


def test_driver_measures_once_per_config_when_workers_are_not_the_device(
    table_file, budget_ms, tmp_path, ray_session
):
    from ray import cloudpickle

    from rexsearch import search

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    settings = search.SearchSettings(
        run_dir=str(tmp_path / "run"),
        flops_budget=None,
        resolution=32,
        trials=2,
        objectives=("rank", "latency"),
        cpus_per_trial=1,
        max_concurrent=1,
        rank_samples=8,
        latency_budget_ms=budget_ms,
        latency_table=str(table_file),
    )
    search.start_run(settings, ["test"])
    outcome = search.execute(settings, trainable_fn=_trial_on_another_device)
    assert outcome.finished == 2
    info = load_run(tmp_path / "run")
    for t in info.open_study().get_trials():
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("error")
        attrs = t.user_attrs
        note = attrs["latency_note"]
        assert note.startswith("measured on the driver") and "Other CPU 9000" in note, note
        assert attrs["latency_measured_ms"] > 0
        assert t.values[1] == pytest.approx(attrs["latency_measured_ms"])
        over = attrs["latency_measured_ms"] - info.latency_budget_ms
        assert t.system_attrs["constraints"] == [pytest.approx(over)]


def test_trials_table_without_a_macs_budget(table_file, budget_ms):
    table = load_table(table_file)
    budget = Budget(latency_ms=budget_ms, latency_table=table, resolution=32)
    study = optuna.create_study(directions=["maximize", "minimize"])
    candidate = baseline_candidate("rexnet-linear", budget)
    for measured in (0.5 * budget_ms, 2 * budget_ms):
        trial = study.ask()
        trial.set_user_attr("macs", candidate.cost.macs)
        trial.set_user_attr("params", candidate.cost.params)
        trial.set_user_attr("latency_ms", candidate.latency_ms)
        trial.set_user_attr("latency_measured_ms", measured)
        study.tell(trial, [0.5, measured])
    frame = trials_table(study.get_trials(), ["rank", "latency"], budget)
    assert frame["feasible"].tolist() == [True, False]
    assert frame["latency"].tolist() == pytest.approx([0.5 * budget_ms, 2 * budget_ms])
    assert not math.isnan(frame["latency_ms"].iloc[0])


def test_run_says_how_far_the_machine_drifted_from_the_table(table_file, capsys):
    from rexsearch.cli.search import RUN_DRIFT_NETWORKS, say_drift
    from rexsearch.cli.status import StatusLine

    budget = Budget(latency_ms=5.0, latency_table=load_table(table_file), resolution=int(RES))
    say_drift(budget, StatusLine(quiet=False))
    err = capsys.readouterr().err
    assert err.startswith("latency table: this machine runs ") and err.count("\n") == 1
    assert f"over {min(RUN_DRIFT_NETWORKS, 2)} calibration networks" in err  # the table has 2
    say_drift(budget, StatusLine(quiet=True))
    say_drift(Budget(macs=100_000_000), StatusLine(quiet=False))
    assert capsys.readouterr().err == ""
