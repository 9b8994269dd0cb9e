"""The one reader of a finished run: the front `run` prints, the report's and export's agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import runfixture

from rexsearch.cli import main
from rexsearch.cli.search import print_front
from rexsearch.results import (
    RunResults,
    candidate_record,
    constraint_values,
    front_keys,
    is_feasible,
    pareto_mask,
    result_record,
)
from rexsearch.space import Budget

PARAMS_BUDGET = 3_800_000
KINDS = {
    "accuracy+rank": {"objectives": ("accuracy", "rank")},
    "rank-only": {"objectives": ("rank",)},
    "params-budget": {"objectives": ("accuracy", "rank"), "params_budget": PARAMS_BUDGET},
}


def _printed_front(capsys, results: RunResults) -> list[int]:
    capsys.readouterr()
    print_front(results)
    return _front_of_table(capsys.readouterr().out)


def _front_of_table(out: str) -> list[int]:
    lines = out[out.index("Pareto front") :].splitlines()[1:]
    numbers = []
    for line in lines:
        cells = line.split()
        if cells and cells[0].isdigit():
            numbers.append(int(cells[0]))
        elif numbers and not line.startswith("-"):
            break
    return numbers


def _report_front(html: str) -> list[int]:
    start = html.index("Feasible Pareto front of the study")
    table = html[start : html.index("</table>", start)]
    return [int(n) for n in re.findall(r"<td>#(\d+)</td>", table)]


def _exported_trial(run_dir: Path, tmp_path: Path, capsys) -> int:
    capsys.readouterr()
    assert main(["export", str(run_dir), "--trial", "best", "--out", str(tmp_path / "best")]) == 0
    return int(re.search(r"exported trial (\d+)", capsys.readouterr().out).group(1))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_run_report_and_export_agree_on_the_front(kind, tmp_path, capsys):
    run = runfixture.make_run(tmp_path / kind, **KINDS[kind])
    results = RunResults.load(run)
    printed = _printed_front(capsys, results)
    assert main(["report", str(run.path)]) == 0
    reported = _report_front((run.path / "report.html").read_text(encoding="utf-8"))
    best = _exported_trial(run.path, tmp_path, capsys)
    assert printed == reported == results.front["number"].tolist()
    assert printed and best == printed[0] == results.best()[0].number
    # the front is the non-dominated set of the feasible complete trials, by the one feasibility rule
    keys, maximize = front_keys(results.objectives)
    table = results.table
    done = table[(table["state"] == "COMPLETE")]
    feasible = done[
        [bool(is_feasible(t.user_attrs, run.budget)) for t in results.trials if t.state.name == "COMPLETE"]
    ]
    expected = feasible[pareto_mask(feasible[keys].to_numpy(float), maximize)]
    assert sorted(expected["number"]) == sorted(printed)


def test_rank_only_front_pairs_rank_with_macs(tmp_path):
    results = RunResults.load(runfixture.make_run(tmp_path / "r", objectives=["rank"]))
    assert front_keys(results.objectives) == (["rank", "macs"], [True, False])
    assert len(results.front) > 1  # a trade-off curve, not only the highest rank


def test_params_budget_makes_trials_infeasible(tmp_path):
    results = RunResults.load(runfixture.make_run(tmp_path / "p", params_budget=PARAMS_BUDGET))
    complete = results.table[results.table["state"] == "COMPLETE"]
    over = complete[complete["params"] > PARAMS_BUDGET]
    assert len(over) >= 3 and not over["feasible"].any()
    assert set(results.front["number"]).isdisjoint(over["number"])
    assert (results.front["params"] <= PARAMS_BUDGET).all()


def test_record_writer_and_feasibility_rule():
    from rexsearch.principles import get_preset

    config = get_preset("rexnet-1.0")
    record = candidate_record(config, 224)
    assert record["macs"] == 398_370_392 and record["params"] == 4_796_873
    assert record["channels"].split()[:3] == ["16", "27", "38"]
    assert constraint_values(record, Budget(400_000_000)) == [398_370_392 - 400_000_000]
    assert is_feasible(record, Budget(400_000_000)) is True
    assert is_feasible(record, Budget(400_000_000, params=4_000_000)) is False
    assert is_feasible({}, Budget(400_000_000)) is None
    measured = result_record({"rank_value": 0.7, "nuclear_norm": 0.5, "accuracy_curve": None, "epoch": 3})
    assert measured == {"rank": 0.7, "nuclear_norm": 0.5}


@pytest.mark.usefixtures("ray_session")
def test_a_real_rank_only_run_prints_the_front_the_report_and_export_use(tmp_path, capsys):
    run_dir = tmp_path / "real"
    code = main(
        [
            "run",
            "--flops-budget",
            "120M",
            "--objectives",
            "rank",
            "--trials",
            "6",
            "--run-dir",
            str(run_dir),
            "--cpus-per-trial",
            "1",
            "--seed",
            "5",
            "--quiet",
        ]
    )
    printed = _front_of_table(capsys.readouterr().out)
    assert code == 0
    reported = _report_front((run_dir / "report.html").read_text(encoding="utf-8"))
    best = _exported_trial(run_dir, tmp_path, capsys)
    assert printed and printed == reported == RunResults.load(run_dir).front["number"].tolist()
    assert best == printed[0]


def test_best_means_one_thing_on_a_constructed_tie(tmp_path, capsys):
    """A searched trial tied on accuracy with the best one, with fewer MACs but a lower rank, and a
    baseline ahead of both: the verdict, the front, confirm and export agree on one order."""
    import optuna

    from rexsearch.report.analysis import Groups
    from rexsearch.results import CONSTRAINTS_ATTR, RunResults
    from rexsearch.search.confirm import targets

    info = runfixture.make_run(tmp_path / "run")
    results = RunResults.load(info)
    best_searched = results.ranked()[0]
    top = results.trial(best_searched)
    study = info.open_study()

    def add(accuracy: float, rank: float, macs_delta: int, extra: dict) -> int:
        attrs = {**top.user_attrs, **extra, "macs": top.user_attrs["macs"] + macs_delta}
        attrs["rank"] = rank
        trial = optuna.trial.create_trial(
            values=[accuracy, rank],
            params=top.params,
            distributions=top.distributions,
            user_attrs=attrs,
            system_attrs={CONSTRAINTS_ATTR: [-1.0] * len(top.system_attrs[CONSTRAINTS_ATTR])},
        )
        study.add_trial(trial)
        return len(study.trials) - 1

    accuracy, rank = top.values
    twin = add(accuracy, rank - 0.05, -1_000_000, {"config_hash": "0123456789ab"})
    ahead = add(accuracy + 0.01, rank, 0, {"config_hash": "ba9876543210", "baseline": "rexnet-linear"})
    results = RunResults.load(info)
    assert results.ranked()[0] == best_searched != twin  # the tie goes to the higher rank, not to MACs
    assert int(Groups.of(results).best_searched()["number"]) == best_searched
    assert int(results.front.iloc[0]["number"]) == ahead
    assert results.best()[0].number == ahead
    first = targets(results, 2)[0]
    assert (first.source_trial, first.role) == (best_searched, "searched")  # never a baseline
    out = tmp_path / "export"
    assert main(["export", str(info.path), "--trial", "best", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"exported trial {ahead}, the baseline rexnet-linear:" in said, said
