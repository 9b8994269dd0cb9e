"""`rexsearch train RUN_DIR --trial N`: a search trial's config trained like `--config` would."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import optuna
import pytest
from support import runfixture
from support.synthetic import tiny_config

from rexsearch.cli import main
from rexsearch.config import ReXNetConfig
from rexsearch.proxy import proxy_config
from rexsearch.results import RunResults
from rexsearch.train import Trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The fixture run plus three trials of our own: a tiny config (fast to train), a trial
    pruned as infeasible and one that failed before its config was decoded (neither has a config)."""
    info = runfixture.make_run(tmp_path_factory.mktemp("run"))
    study = info.open_study()
    tiny = tiny_config()
    attrs = {"config": tiny.to_dict(), "config_hash": tiny.short_hash(), "macs": 1, "params": 2}
    study.add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=[0.5, 0.5], user_attrs=attrs)
    )
    infeasible = "infeasible: no width multiplier meets the budget (smallest 412,000,000 MACs)"
    study.add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"error": infeasible})
    )
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL,
            user_attrs={"error": "interrupted: the search stopped while it ran\n(second line)"},
        )
    )
    tiny_n, infeasible_n, failed_n = (t.number for t in study.trials[-3:])
    return SimpleNamespace(info=info, path=info.path, tiny=tiny_n, infeasible=infeasible_n, failed=failed_n)


@pytest.fixture(scope="module")
def data_dir(cifar_archive, tmp_path_factory):
    path, _ = cifar_archive
    folder = tmp_path_factory.mktemp("data")
    shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture
def data_args(data_dir, cifar_archive, monkeypatch):
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", cifar_archive[1])
    return ["--data-dir", str(data_dir), "--batch-size", "50", "--warmup-epochs", "0.5"]


def test_trial_config_is_the_trials_and_named_after_the_run(run):
    trial = run.info.open_study().trials[0]  # the rexnet-linear baseline
    results = RunResults.load(run.path)
    found = results.trial(0)
    config = results.config(found, purpose="trained")
    assert found.number == 0 and results.run.path == run.path
    assert config.content_hash() == ReXNetConfig.from_dict(trial.user_attrs["config"]).content_hash()
    assert config.name == f"{run.path.name}-rexnet-linear"
    searched = results.config(results.trial(2), purpose="trained")
    assert (
        searched.name == f"{run.path.name}-trial-2"
        and searched.short_hash() == run.info.open_study().trials[2].user_attrs["config_hash"]
    )


def test_trains_the_trials_config_into_the_run_and_resumes(run, data_args, capsys, monkeypatch):
    argv = ["train", str(run.path), "--trial", str(run.tiny), "--epochs", "2", *data_args]
    out = run.path / "train" / f"trial-{run.tiny}-s0"
    real_epoch = Trainer.train_epoch

    def interrupted(self, *a, **kw):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, *a, **kw)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    assert main(argv) == 130
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 1
    capsys.readouterr()

    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "resuming after epoch 1" in captured.err and "epoch 2/2" in captured.err
    assert "epoch 1/2" not in captured.err
    assert "test top-1" in captured.out and str(out) in captured.out

    expected = proxy_config(tiny_config(), 32, 100)
    trained = ReXNetConfig.load(out / "config.json")
    assert trained.content_hash() == expected.content_hash()
    assert trained.out_channels == expected.out_channels
    assert trained.name == f"{run.path.name}-trial-{run.tiny}@proxy32"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config_hash"] == expected.content_hash()
    assert [m["epoch"] for m in metrics["epochs"]] == [1, 2] and metrics["finished"]
    assert metrics["source"] == {
        "kind": "run",
        "run_dir": str(run.path),
        "trial": run.tiny,
        "study_name": "rexsearch",
        "trial_state": "COMPLETE",
        "baseline": None,
        "target_config_hash": tiny_config().content_hash(),
        "target_macs": 1,
        "target_params": 2,
        "budget_resolution": runfixture.RESOLUTION,
    }

    # the same as --config with the trial's config: same network, same numbers
    config_file = run.path / "tiny.json"
    tiny_config().save(config_file)
    other = run.path / "via-config"
    assert (
        main(["train", "--config", str(config_file), "--epochs", "2", "--out", str(other), *data_args]) == 0
    )
    capsys.readouterr()
    via_config = json.loads((other / "metrics.json").read_text())
    assert via_config["config_hash"] == metrics["config_hash"]
    assert [m["train_loss"] for m in via_config["epochs"]] == [m["train_loss"] for m in metrics["epochs"]]
    assert via_config["source"]["kind"] == "config"


def test_out_overrides_and_failed_trial_with_a_config_is_trained(run, data_args, tmp_path, capsys):
    failed = next(
        t for t in run.info.open_study().trials if t.state.name == "FAIL" and "config" in t.user_attrs
    )
    out = tmp_path / "elsewhere"
    argv = ["train", str(run.path), "--trial", str(failed.number), "--epochs", "1", "--out", str(out)]
    assert main([*argv, *data_args, "--train-images", "100"]) == 0
    note = (
        f"note: trial {failed.number} has not completed in the search (failed: RuntimeError: fvcore "
        "counted 1 MACs more than the analytic model); training its config anyway\n"
    )
    assert capsys.readouterr().err.startswith(note)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["source"]["trial"] == failed.number and metrics["source"]["trial_state"] == "FAIL"
    expected = proxy_config(ReXNetConfig.from_dict(failed.user_attrs["config"]), 32, 100)
    assert metrics["config_hash"] == expected.content_hash()
    assert not (run.path / "train" / f"trial-{failed.number}-s0").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{missing}", "--trial", "0"], "no run directory at {missing}"),
        (["{plain}", "--trial", "0"], "{plain} is not a rexsearch run directory: run.json is missing"),
        (["{run}", "--trial", "99"], "{run} has no trial 99 (trial numbers: 0 to {last})"),
        (
            ["{run}", "--trial", "{infeasible}"],
            "trial {infeasible} has no config attribute (pruned: infeasible: no width multiplier meets "
            "the budget (smallest 412,000,000 MACs)); it cannot be trained",
        ),
        (
            ["{run}", "--trial", "{failed}"],
            "trial {failed} has no config attribute (failed: interrupted: the search stopped while it "
            "ran (second line)); it cannot be trained",
        ),
        (["--trial", "3"], "--trial N needs the run directory: rexsearch train RUN_DIR --trial 3"),
        (["{run}"], "RUN_DIR needs --trial N, the trial to train: rexsearch train {run} --trial N"),
        (["{run}", "--preset", "rexnet-1.0"], "give either RUN_DIR --trial N or --preset, not both"),
        (["--config", "x.json", "--trial", "3"], "--trial N takes its config from a run, not from --config"),
        (["{run}", "--trial", "two"], "--trial must be a trial number (0, 1, ...), got 'two'"),
        (["{run}", "--trial", "-1"], "--trial must be a trial number (0, 1, ...), got '-1'"),
        ([], "give the config to train: --preset NAME, --config FILE or RUN_DIR --trial N"),
    ],
)
def test_bad_sources_are_one_line_errors(run, tmp_path, capsys, argv, message):
    (tmp_path / "plain").mkdir()
    names = {
        "run": run.path,
        "missing": tmp_path / "missing",
        "plain": tmp_path / "plain",
        "last": run.failed,
        "infeasible": run.infeasible,
        "failed": run.failed,
    }
    argv = [a.format(**names) for a in argv]
    assert main(["train", *argv, "--epochs", "1", "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rexsearch: error: ") and err.count("\n") == 1, err
    assert message.format(**names) in err
    assert "Traceback" not in err and "CIFAR" not in err  # refused before any data is looked for
    assert not (run.path / "train" / "trial-99-s0").exists()
