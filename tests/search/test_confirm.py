"""The confirmation stage: planning, the confirmed verdict, the report section, the model card,
and one real run with ``--confirm`` on a local Ray (then ``confirm`` again: nothing retrained)."""

from __future__ import annotations

import textwrap

import pytest
from support import runfixture

from rexsearch import stats
from rexsearch.cli import main
from rexsearch.confirmation import confirm_study
from rexsearch.errors import UserError
from rexsearch.report import make_report
from rexsearch.results import RunResults
from rexsearch.search import confirm as confirm_mod


@pytest.fixture
def run(tmp_path):
    return runfixture.make_run(tmp_path / "run")


def _best_label(info) -> str:
    return f"trial-{RunResults.load(info).ranked()[0]}"


def test_without_confirmation_the_verdict_says_it_rests_on_single_trainings(run):
    files = make_report(run.path)
    assert "rests on single trainings" in files.verdict and "rexsearch confirm" in files.verdict
    html = files.html.read_text()
    assert '<section id="confirmation"><h2>Confirmation</h2>' in html and "No confirmation trainings" in html


def test_confirmed_verdict_section_and_card(run, tmp_path):
    best = _best_label(run)
    values = {
        best: [0.712, 0.705, 0.721],
        "rexnet-linear": [0.680, 0.686, 0.676],
        "mobilenetv2-stagewise": [0.705, 0.731, 0.699],
    }
    runfixture.add_confirmation(run, values, failed=1)
    files = make_report(run.path)
    linear = stats.difference(values[best], values["rexnet-linear"])
    stage = stats.difference(values[best], values["mobilenetv2-stagewise"])
    assert linear.verdict == "beats" and stage.verdict.startswith("ties")
    v = files.verdict
    assert v.startswith(f"Confirmed at {runfixture.EPOCHS} epochs: the best searched config ({best}")
    assert f"beats rexnet-linear ({100 * linear.mean_b:.2f}% ± {100 * linear.std_b:.2f} over 3 seeds)" in v
    assert f"{100 * linear.diff:+.2f} points, 95% CI [{100 * linear.low:+.2f}, {100 * linear.high:+.2f}]" in v
    assert "ties (difference within noise) mobilenetv2-stagewise" in v and "Welch" in v
    assert "single trainings" not in v
    html = files.html.read_text()
    assert 'id="fig-confirmation"' in html and "1 confirmation training(s) failed" in html
    assert f"[{-100 * linear.high:+.2f}, {-100 * linear.low:+.2f}]" in html  # baseline minus best

    code = main(["export", str(run.path), "--trial", "best", "--out", str(tmp_path / "exp")])
    assert code == 0
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "## Confirmed accuracy" in card
    assert f"| proxy accuracy, 3 seeds (1, 2, 3), {runfixture.EPOCHS} epochs | 71.27% ±" in card
    assert (
        f"| vs rexnet-linear ({100 * linear.mean_b:.2f}%) | beats: {100 * linear.diff:+.2f} points, 95% CI"
        in card
    )


def test_identical_seed_results_tie(run):
    best = _best_label(run)
    runfixture.add_confirmation(run, {best: [0.7, 0.71, 0.69], "rexnet-linear": [0.7, 0.71, 0.69]})
    (label, d), *_ = RunResults.load(run.path).confirmation.comparisons()
    assert label == "rexnet-linear" and d.verdict == stats.TIES and d.diff == 0.0
    assert "ties (difference within noise) rexnet-linear" in make_report(run.path).verdict


def test_plan_targets_seeds_and_resume(run):
    results = RunResults.load(run.path)
    p = confirm_mod.plan(results, top=3, seeds=3)
    searched = [t for t in p.targets if t.role == "searched"]
    assert [t.source_trial for t in searched] == results.ranked()[:3]
    assert searched[0].source_trial == results.best()[0].number and searched[0].pick_rank == 1
    assert {t.label for t in p.targets if t.role == "baseline"} == {"rexnet-linear", "mobilenetv2-stagewise"}
    assert p.seeds == (1, 2, 3) and p.epochs == runfixture.EPOCHS and len(p.todo) == p.total == 15
    runfixture.add_confirmation(run, {searched[0].label: [0.7, 0.71]})
    again = confirm_mod.plan(RunResults.load(run.path), top=3, seeds=3)
    assert len(again.todo) == 13 and (searched[0], 3) in again.todo and (searched[0], 1) not in again.todo
    with pytest.raises(UserError, match="below the search's"):
        confirm_mod.plan(results, epochs=runfixture.EPOCHS - 1)
    with pytest.raises(UserError, match="--seeds at least 2"):
        confirm_mod.plan(results, seeds=1)


def test_rank_only_run_cannot_be_confirmed(tmp_path, capsys):
    info = runfixture.make_run(tmp_path / "r", objectives=("rank",))
    assert main(["confirm", str(info.path)]) == 2
    assert "rank-only run" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_session")
def test_run_with_confirm_on_ray(tmp_path, cifar_server, monkeypatch, capsys):
    monkeypatch.setenv("REXSEARCH_DATA", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    args = ["--flops-budget", "60M", "--trials", "3", "--epochs", "1", "--train-images", "200"]
    args += ["--val-images", "100", "--batch-size", "50", "--cpus-per-trial", "1", "--quiet"]
    code = main(["run", *args, "--run-dir", str(run_dir), "--confirm", "1", "--confirm-seeds", "2"])
    assert code == 0
    out = capsys.readouterr().out
    # 1 epoch on 200 tiny images may sit at chance, which the verdict then says first
    assert "verdict: Confirmed at 1 epochs" in out or "verdict: The proxies have not learned" in out
    results = RunResults.load(run_dir)
    study = confirm_study(results.run)
    assert study.study_name == "rexsearch-confirm" and study.metric_names == ["accuracy"]
    trials = study.get_trials()
    baselines = {t.user_attrs["baseline"] for t in results.trials if t.user_attrs.get("baseline")}
    expected = 2 * (1 + len(baselines))
    assert len(trials) == expected and all(t.state.name == "COMPLETE" for t in trials)
    assert {t.user_attrs["label"] for t in trials if t.user_attrs["role"] == "baseline"} == baselines
    best = results.best()[0]
    mine = [t for t in trials if t.user_attrs["source_trial"] == best.number]
    assert sorted(t.user_attrs["seed"] for t in mine) == [1, 2]
    assert {t.user_attrs["config_hash"] for t in mine} == {best.user_attrs["config_hash"]}
    assert len(results.confirmation.summary) == 1 + len(baselines)
    assert "Confirmation" in (run_dir / "report.html").read_text()
    # resumable: every pair is COMPLETE, so confirming again trains nothing
    assert main(["confirm", str(run_dir), "--top", "1", "--seeds", "2", "--quiet"]) == 0
    assert len(confirm_study(results.run).get_trials()) == expected
    assert "confirmation:" not in capsys.readouterr().out


CONFIRM_SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from rexsearch.cli import main
    from rexsearch.search import trial as trial_mod

    real = trial_mod.trial_function

    def slow_trial(tune_config, split=None, job=None):
        time.sleep(3)  # a window to be stopped while trainings run
        real(tune_config, split, job)

    trial_mod.trial_function = slow_trial  # confirm imports it when it runs
    sys.exit(main(["confirm", sys.argv[1], "--top", "1", "--seeds", "3", "--quiet"]))
    """
)


@pytest.mark.usefixtures("ray_session")
def test_sigterm_stops_confirm_like_a_run(tmp_path, cifar_server, monkeypatch, capsys):
    """SIGTERM mid-confirmation: exit 143, no stack dump, finished trainings kept, none left
    running, and the output says the verdict is incomplete."""
    import os

    import ray
    from support.drivers import sigterm_when, study_counts

    monkeypatch.setenv("REXSEARCH_DATA", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    args = ["--flops-budget", "60M", "--trials", "3", "--epochs", "1", "--train-images", "200"]
    args += ["--val-images", "100", "--batch-size", "50", "--cpus-per-trial", "1", "--quiet"]
    assert main(["run", *args, "--run-dir", str(run_dir)]) == 0
    searched = study_counts(run_dir / "study.db")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}

    def ready() -> bool:
        counts = study_counts(run_dir / "study.db")
        return counts.get("RUNNING", 0) >= 1 and sum(counts.values()) > sum(searched.values())

    code, err = sigterm_when(CONFIRM_SIGTERM_SCRIPT, [str(run_dir)], ready, env, "confirm")
    assert code == 143, err[-2000:]
    assert "Traceback" not in err and "Fatal Python error" not in err, err[-2000:]
    assert "the verdict above is incomplete" in err and f"rexsearch confirm {run_dir}" in err
    trials = confirm_study(RunResults.load(run_dir).run).get_trials()
    assert trials and not [t for t in trials if t.state.name == "RUNNING"]


def test_a_study_named_like_the_confirmation_is_never_read_as_it(run):
    """Another run in the same storage whose study is named `<study>-confirm`: this run's report
    ignores it, and confirm refuses to write into it."""
    import optuna

    storage = run.open_storage()
    other = optuna.create_study(
        study_name=f"{run.study_name}-confirm", storage=storage, directions=["maximize"] * 2
    )
    other.enqueue_trial({})
    assert not RunResults.load(run).confirmation  # not this run's confirmation
    assert "Confirmed" not in make_report(run.path).verdict
    with pytest.raises(UserError, match="is not the confirmation of 'rexsearch'"):
        confirm_study(run, create=True)  # what confirm writes into


def test_the_confirmation_estimate_follows_the_search_and_the_slots(run):
    from rexsearch.search import SearchSettings
    from rexsearch.search.cluster import Resources

    results = RunResults.load(run)
    p = confirm_mod.plan(results, top=1, seeds=2)
    settings = SearchSettings(run_dir=str(run.path), flops_budget=runfixture.BUDGET)
    two = Resources(cpus_per_trial=1.0, gpus_per_trial=0.0, cpus=2.0, gpus=0.0, nodes=1)
    line = confirm_mod.estimate_line(results, p, settings, two)
    table = results.table
    each = table.loc[table["state"] == "COMPLETE", "train_seconds"].median()
    rounds = -(-len(p.todo) // 2)
    assert line.startswith(f"{len(p.todo)} trainings to run, 2 at a time: about {each * rounds / 60:.0f} min")
    assert f"({each:.0f} s each" in line
