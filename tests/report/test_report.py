"""trials.csv, the self-contained HTML report and pareto.png on a fake but realistic run."""

from __future__ import annotations

import html
import json
import re
from html import escape as html_escape

import optuna
import pandas as pd
import pytest
from scipy import stats
from support import runfixture

from rexsearch.cli import main
from rexsearch.report import make_report, write_report
from rexsearch.report.analysis import CALIBRATION_RESAMPLES, tau_differences
from rexsearch.report.html import rank_verdict
from rexsearch.results import RunResults
from rexsearch.rundir import RUN_FORMAT_V1, write_run_json
from rexsearch.stats import rank_agreement

SECTIONS = {
    "summary": "Run",
    "verdict": "Verdict",
    "pareto": "Pareto fronts",
    "history": "Optimisation history",
    "profiles": "Channel profiles",
    "principles": "Per-principle analysis",
    "calibration": "Rank proxy calibration",
    "importance": "Parameter importances",
    "failures": "Failed, pruned and infeasible trials",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runfixture.make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def report(run):
    files = make_report(run.path)
    return files, files.html.read_text(encoding="utf-8")


def test_trials_csv_has_one_row_per_trial(run, report):
    files, _ = report
    table = pd.read_csv(files.csv)
    study = run.open_study()
    assert len(table) == len(study.trials) == 19
    assert list(table["number"]) == [t.number for t in study.trials]
    for column in (
        "state",
        "value_accuracy",
        "value_rank",
        "param_n_expand",
        "config_hash",
        "macs",
        "params",
        "proxy_macs",
        "fvcore_macs",
        "rank",
        "nuclear_norm",
        "accuracy",
        "expand_layers",
        "slope",
        "nonlinearity",
        "se",
        "baseline",
        "feasible",
        "error",
        "train_seconds",
    ):
        assert column in table.columns, column
    by_number = table.set_index("number")
    assert set(table["state"]) == {"COMPLETE", "PRUNED", "FAIL"}
    assert by_number.loc[0, "baseline"] == "rexnet-linear"
    assert by_number.loc[1, "baseline"] == "mobilenetv2-stagewise"
    assert not by_number.loc[18, "feasible"]
    assert by_number.loc[13, "state"] == "FAIL"
    assert "fvcore counted" in by_number.loc[13, "error"]
    assert by_number.loc[2, "macs"] == study.trials[2].user_attrs["macs"]
    assert by_number.loc[2, "nonlinearity"] == "silu"


def test_trials_frame_fills_pruned_accuracy_from_the_last_epoch(run):
    frame = RunResults.load(run).table.set_index("number")
    pruned = run.open_study().trials[8]
    assert frame.loc[8, "state"] == "PRUNED"
    assert frame.loc[8, "accuracy"] == pytest.approx(pruned.user_attrs["accuracy_curve"][-1])
    assert pd.isna(frame.loc[8, "value_accuracy"])


def test_report_has_every_section(report):
    _, html = report
    for sid, title in SECTIONS.items():
        assert f'<section id="{sid}"><h2>{title}</h2>' in html, sid
    for phrase in (
        "multiply-accumulates of conv and linear layers at 224x224",
        "fvcore&#x27;s total adds",
        "empirical distribution",
        "Kendall tau",
        "Spearman rho",
        "get_param_importances",
        "fig-pareto-macs",
        "fig-pareto-rank",
        "fig-history",
        "fig-profiles",
        "fig-principles",
        "fig-importance",
    ):
        assert phrase in html, phrase


def test_report_numbers(run, report):
    files, html = report
    frame = RunResults.load(run).table
    done = frame[(frame["state"] == "COMPLETE") & frame["feasible"].fillna(False).astype(bool)]
    searched = done[done["baseline"] == ""]
    best = searched.sort_values("accuracy", ascending=False).iloc[0]
    linear = done[done["baseline"] == "rexnet-linear"].iloc[0]
    diff = 100 * (best["accuracy"] - linear["accuracy"])
    assert files.verdict.startswith("On single trainings, the best searched config")  # unconfirmed
    assert f"trial #{best['number']}, {100 * best['accuracy']:.2f}%" in files.verdict
    assert diff > 0
    paper = f"rexnet-linear ({100 * linear['accuracy']:.2f}%)"
    assert f"is ahead of the paper's ReXNet, {paper}, by {diff:.2f} points" in files.verdict
    assert "beats" not in files.verdict and "rexsearch confirm" in files.verdict
    assert files.verdict in html.replace("&#x27;", "'")
    everything = frame[frame["state"] == "COMPLETE"]
    tau = stats.kendalltau(everything["rank"], everything["accuracy"]).statistic
    rho = stats.spearmanr(everything["macs"], everything["accuracy"]).statistic
    assert f"<td>{tau:.3f}</td>" in html
    assert f"<td>{rho:.3f}</td>" in html
    assert "RuntimeError: fvcore counted 1 MACs more than the analytic model" in html
    # the calibration: tau's bootstrap interval, a paired verdict on rank against cost, and the
    # fidelity study's evidence labelled with its data set (the fake run is on CIFAR-100)
    tau_rank = rank_agreement(everything["rank"], everything["accuracy"], resamples=CALIBRATION_RESAMPLES)
    assert f"<td>[{tau_rank.low:.3f}, {tau_rank.high:.3f}]</td>" in html
    diffs = tau_differences(everything, "rank", "accuracy", ["macs", "params"])
    assert set(diffs) == {"macs", "params"}
    assert html_escape(rank_verdict(diffs)) in html
    assert "Evidence from real images (Fashion-MNIST, not this run&#x27;s data set;" in html
    assert "off the right edge" in html  # the infeasible outlier does not squash the MACs axis


def test_report_is_self_contained(report):
    _, html = report
    assert not re.search(r"<script[^>]*\ssrc\s*=", html, re.I)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?(https?:)?//", html, re.I)
    assert not re.search(r"@import\s+url", html, re.I)
    assert html.count("* plotly.js v") == 1  # the bundle is embedded exactly once


def test_pareto_png(report):
    files, _ = report
    assert files.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rank_only_run_uses_rank(tmp_path):
    run = runfixture.make_run(tmp_path / "rank-only", objectives=["rank"])
    path = write_report(run.path)
    html = path.read_text(encoding="utf-8").replace("&#x27;", "'")
    assert "This run is rank-only" in html
    assert "cannot be calibrated" in html
    assert "normalized feature rank vs MACs" in html
    table = pd.read_csv(run.path / "trials.csv")
    assert "value_rank" in table.columns and "value_accuracy" not in table.columns
    assert "By rank (one measurement per config), the best searched config" in html
    assert "the paper's ReXNet, rexnet-linear (" in html


def test_report_of_a_run_where_everything_failed(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    write_run_json(  # an early run.json/1: no settings record, no versions, no space
        tmp_path,
        {
            "format": RUN_FORMAT_V1,
            "command": ["rexsearch", "run"],
            "seed": 0,
            "budget": {"flops": 300_000_000, "params": None, "resolution": 224},
            "objectives": ["accuracy", "rank"],
            "storage": storage,
            "study_name": "s",
        },
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "maximize"])
    for baseline in ("rexnet-linear", "mobilenetv2-stagewise"):
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.FAIL, user_attrs={"baseline": baseline, "error": "worker died"}
            )
        )
    files = make_report(tmp_path)
    assert "No searched trial completed" in files.verdict
    html = files.html.read_text(encoding="utf-8")
    assert html.count("worker died") == 2
    assert len(pd.read_csv(files.csv)) == 2


def test_cli_report(run, capsys):
    assert main(["report", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "trials.csv" in out
    assert "is ahead of the paper's ReXNet, rexnet-linear" in out


def test_cli_report_missing_run_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no run directory" in capsys.readouterr().err


def test_a_stand_in_data_set_is_named_in_the_report_and_the_model_card(tmp_path):
    run = runfixture.make_run(tmp_path / "digits")
    data = json.loads((run.path / "run.json").read_text())
    data["data"] = {"archive_md5": "8ff0a6958216c060e5251a16e5da5800", "cifar100": False}
    (run.path / "run.json").write_text(json.dumps(data))
    page = html.unescape(write_report(run.path).read_text(encoding="utf-8"))
    assert "not CIFAR-100's" in page and "8ff0a6958216c060e5251a16e5da5800" in page
    assert main(["export", str(run.path), "--out", str(tmp_path / "best")]) == 0
    assert "not CIFAR-100's" in (tmp_path / "best" / "README.md").read_text()
    data["data"]["cifar100"] = True
    (run.path / "run.json").write_text(json.dumps(data))
    assert "stand-in" not in write_report(run.path).read_text(encoding="utf-8")


def _as_cifar10(info) -> None:
    """Record the fixture run as a 10-class run (its run.json's data set)."""
    import json

    meta = info.path / "run.json"
    data = json.loads(meta.read_text())
    data["data"] = {"dataset": "cifar10", "title": "CIFAR-10", "classes": 10, "official": True}
    data["data"]["split"] = {"train_images": 5000, "val_images": 1000, "seed": 0}
    meta.write_text(json.dumps(data))


def test_a_run_at_chance_is_named_so_and_wins_nothing(tmp_path):
    info = runfixture.make_run(tmp_path / "run", chance=0.1)
    _as_cifar10(info)
    files = make_report(info.path)
    assert files.verdict.startswith("The proxies have not learned: the best proxy accuracy, ")
    assert "10.0% for 10 classes" in files.verdict and "beats" not in files.verdict
    assert "run with --epochs 4" in files.verdict  # 3 x 5,000 / 128 = 117 steps; 4 epochs give 156
    html = files.html.read_text()
    assert '<p class="verdict warn">The proxies have not learned' in html


def test_a_run_that_learned_is_not_called_chance(tmp_path):
    info = runfixture.make_run(tmp_path / "run")
    _as_cifar10(info)
    files = make_report(info.path)
    assert not files.verdict.startswith("The proxies have not learned")
    assert '<p class="verdict open">' in files.html.read_text()  # single trainings: not green


def test_a_config_is_never_compared_with_itself(tmp_path):
    """The search's best is rexnet-linear's own network: the confirmed verdict says so and
    compares it only with the other baseline."""
    info = runfixture.make_run(tmp_path / "run")
    runfixture.add_confirmation(
        info,
        {
            "trial-0": [0.70, 0.71, 0.69],
            "rexnet-linear": [0.70, 0.71, 0.69],
            "mobilenetv2-stagewise": [0.60, 0.61, 0.62],
        },
    )
    files = make_report(info.path)
    assert "it is the same network as rexnet-linear, which it is not compared with" in files.verdict
    assert "rexnet-linear (70.00%" not in files.verdict
    assert "beats mobilenetv2-stagewise" in files.verdict
