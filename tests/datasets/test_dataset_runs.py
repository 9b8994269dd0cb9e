"""Data sets in runs and trainings: grayscale sets and the head's classes, a proxy on Debian's
real Fashion-MNIST, what run.json, trials.csv, the report, the terminal and the model card record,
and the refusals of another or a changed data set (resume, confirm, compare, train).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support.dataset_files import (
    fashion_env,
    make_folder,
    write_fashion,
    write_image,
)
from support.synthetic import tiny_config

from rexsearch.cli import main
from rexsearch.datasets import (
    describe,
    fashion_mnist,
    load_dataset,
    mismatch,
    recorded_dataset,
)
from rexsearch.datasets.splits import search_split
from rexsearch.errors import UserError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------- training on a data set
def test_grayscale_images_feed_the_three_channel_stem_and_the_head_has_the_sets_classes(
    tmp_path, monkeypatch
):
    from rexsearch.augment import normalize
    from rexsearch.train import TrainSettings, train_proxy

    grey = torch.full((2, 1, 32, 32), 51, dtype=torch.uint8)
    out = normalize(grey, None, (0.2, 0.2, 0.2), (0.1, 0.1, 0.1))
    assert out.shape == (2, 3, 32, 32) and torch.allclose(out, torch.zeros_like(out), atol=1e-6)
    sums = write_fashion(tmp_path / "fm")
    monkeypatch.setenv("REXSEARCH_FASHION_MNIST_MD5", fashion_env(sums))
    split = search_split(load_dataset("fashion-mnist", tmp_path / "fm"), 50, 100, seed=0)
    settings = TrainSettings(epochs=1, batch_size=25, warmup_epochs=0.0, device="cpu")
    result = train_proxy(tiny_config(), split, settings)
    assert result.model.classifier.out_features == 10 and result.model.stem.conv.in_channels == 3


@pytest.mark.skipif(not DEBIAN.is_dir(), reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN})")
def test_a_proxy_learns_the_real_fashion_mnist(monkeypatch):
    """Debian's real files: found by themselves, verified by content, and learnable well above
    chance (10%) by a tiny network on 1,000 images in 5 epochs (about 10 s on 2 cores)."""
    from rexsearch.train import TrainSettings, train_proxy

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (DEBIAN,))
    data = load_dataset("fashion-mnist")
    assert data.official and data.source == str(DEBIAN.resolve())
    assert data.identity()["content_md5"] == fashion_mnist.CONTENT_MD5
    assert data.train_x.shape == (60_000, 1, 32, 32) and data.test_x.shape == (10_000, 1, 32, 32)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    stats = data.train_x[:10_000].double() / 255
    assert (
        abs(stats.mean().item() - fashion_mnist.MEAN[0]) < 0.01
        and abs(stats.std().item() - fashion_mnist.STD[0]) < 0.01
    )
    split = search_split(data, val_images=300, train_images=1000, seed=0)
    settings = TrainSettings(
        epochs=5, batch_size=50, lr=0.2, warmup_epochs=0.5, resolution=16, label_smoothing=0.0, device="cpu"
    )
    torch.set_num_threads(2)
    result = train_proxy(tiny_config(16), split, settings)
    assert result.final_accuracy > 0.5, result.accuracy_curve


# ---------------------------------------------------------------------------- what runs record
def test_old_run_json_without_a_data_set_is_cifar100(tmp_path):
    from support import runfixture

    from rexsearch.results import RunResults

    run = runfixture.make_run(tmp_path / "old", layout="v1")
    assert "data" not in run.data and run.dataset == {"dataset": "cifar100", "title": "CIFAR-100"}
    assert run.dataset_title == "CIFAR-100" and run.stand_in_data is None
    assert set(RunResults.load(run).table["dataset"]) == {"cifar100"}
    assert recorded_dataset({"archive_md5": "ab", "cifar100": False})["digest"] == "md5:ab"


def _record(run_dir: Path, data: dict, settings: dict | None = None) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    meta["data"] = data
    if settings is not None:
        meta["settings"] = settings
    (run_dir / "run.json").write_text(json.dumps(meta))


def test_report_card_and_table_name_the_data_set(tmp_path):
    from support import runfixture

    from rexsearch.report import make_report

    run = runfixture.make_run(tmp_path / "fm")
    identity = {
        "dataset": "fashion-mnist",
        "title": "Fashion-MNIST",
        "digest": "md5:93c46a689b056edbce469927d01d80c7",
        "official": True,
        "classes": 10,
        "train_images": 60000,
        "test_images": 10000,
        "mean": list(fashion_mnist.MEAN),
        "std": list(fashion_mnist.STD),
        "split": {"train_images": 5000, "val_images": 1000, "seed": 0, "validation": "held out"},
    }
    _record(run.path, identity)
    files = make_report(run.path)
    page = files.html.read_text(encoding="utf-8")
    assert "rexsearch report: fm on Fashion-MNIST" in page
    assert "Fashion-MNIST (10 classes; 60,000 training and 10,000 test images" in page
    assert "md5:93c46a689b056edbce469927d01d80c7" in page
    import pandas as pd

    assert set(pd.read_csv(files.csv)["dataset"]) == {"fashion-mnist"}
    assert main(["export", str(run.path), "--out", str(tmp_path / "best")]) == 0
    card = (tmp_path / "best" / "README.md").read_text()
    assert (
        "searched on Fashion-MNIST" in card and "## Data set" in card and "the proxies had 10 outputs" in card
    )
    from rexsearch.checkpoints import read_safetensors

    _, meta = read_safetensors(tmp_path / "best" / "model.safetensors")
    assert json.loads(meta["rexsearch.dataset"])["dataset"] == "fashion-mnist"


def test_the_terminal_summary_names_the_data_set(tmp_path, capsys):
    from support import runfixture

    from rexsearch.cli.search import print_front
    from rexsearch.results import RunResults

    run = runfixture.make_run(tmp_path / "r")
    _record(run.path, {"dataset": "cifar10", "title": "CIFAR-10", "digest": "md5:x", "classes": 10})
    print_front(RunResults.load(run.path))
    assert "Pareto front on CIFAR-10 (" in capsys.readouterr().out


def test_compare_refuses_runs_on_different_data_sets(tmp_path):
    from support import runfixture

    from rexsearch.compare import compare_runs

    a = runfixture.make_run(tmp_path / "a")
    b = runfixture.make_run(tmp_path / "b")
    _record(b.path, {"dataset": "fashion-mnist", "title": "Fashion-MNIST", "digest": "md5:y"})
    with pytest.raises(
        UserError, match=r"trained on different data.*CIFAR-100, not Fashion-MNIST.*--force does not"
    ):
        compare_runs([a.path, b.path], force=True)
    code = main(["compare", str(a.path), str(b.path), "--out", str(tmp_path / "cmp")])
    assert code == 2


def test_mismatch_compares_names_then_digests():
    a = {"dataset": "folder", "title": "folder pets", "digest": "sha256:1"}
    assert mismatch(a, {**a}) is None
    assert mismatch(a, {**a, "digest": "sha256:2"}) == (
        "folder pets with digest sha256:1, not the copy found now (digest sha256:2)"
    )
    assert (
        mismatch({"dataset": "cifar100"}, {"dataset": "cifar10", "digest": "md5:z"})
        == "CIFAR-100, not CIFAR-10"
    )
    assert mismatch(None, a) is None and "rank-only" in describe(None)


def _folder_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run (the fixture's study) recorded as searched on an image folder."""
    from support import runfixture

    from rexsearch.search import SearchSettings

    root = make_folder(tmp_path / "pets", {"": 8})
    run = runfixture.make_run(tmp_path / "run")
    settings = SearchSettings(
        run_dir=str(run.path),
        flops_budget=runfixture.BUDGET,
        objectives=("accuracy", "rank"),
        dataset="folder",
        data_dir=str(root),
        val_images=None,
    )
    split = search_split(load_dataset("folder", root), None, None, 0)
    _record(run.path, split.dataset, {**settings.to_dict(), "storage": run.settings["storage"]})
    return run.path, root


def test_resume_and_confirm_refuse_a_changed_data_set_before_ray(tmp_path, capsys, monkeypatch):
    from rexsearch import search
    from rexsearch.rundir import load_run
    from rexsearch.search.confirm import confirm

    monkeypatch.setattr(search, "ensure_ray", lambda *a: pytest.fail("refused before Ray starts"))
    monkeypatch.setattr("rexsearch.search.cluster.ensure_ray", lambda *a: pytest.fail("refused before Ray"))
    run_dir, root = _folder_run(tmp_path)
    run = load_run(run_dir)
    settings = search.settings_from_run(run)
    assert search.load_split(settings, run=run).num_classes == 3  # unchanged: accepted
    write_image(root / "dog" / "extra.png", (9, 9, 9))
    with pytest.raises(UserError, match=r"was searched on folder pets with digest sha256:\w+, not the copy"):
        search.load_split(settings, run=run)
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was searched on folder pets" in err and "Traceback" not in err
    assert main(["run", "--resume", "--run-dir", str(run_dir), "--dataset", "cifar10", "--quiet"]) == 2
    assert "was searched on folder, not cifar10" in capsys.readouterr().err
    other = search_split(load_dataset("folder", make_folder(tmp_path / "other", {"": 4})), None, None, 0)
    with pytest.raises(UserError, match="was searched on folder pets with digest"):
        confirm(str(run_dir), split=other)


def test_run_json_records_the_data_set_and_its_split(tmp_path):
    from rexsearch import search
    from rexsearch.rundir import load_run

    root = make_folder(tmp_path / "pets", {"train": 6, "val": 2})
    settings = search.SearchSettings(
        run_dir=str(tmp_path / "run"),
        flops_budget=150_000_000,
        objectives=("accuracy", "rank"),
        dataset="folder",
        data_dir=str(root),
        val_images=None,
    )
    settings.validate()
    split = search.load_split(settings)
    search.start_run(settings, ["test"], split.dataset)
    run = load_run(tmp_path / "run")
    data = run.data["data"]
    assert (
        data["dataset"] == "folder" and data["classes"] == 3 and data["class_names"] == ["cat", "dog", "eel"]
    )
    assert data["train_images"] == 18 and data["val_images"] == 6 and data["digest"].startswith("sha256:")
    assert data["split"] == {"train_images": 18, "val_images": 6, "seed": 0, "validation": "val/"}
    assert run.data["settings"]["dataset"] == "folder" and run.dataset_title == "folder pets"


def test_settings_refuse_bad_data_set_flags_in_one_line(tmp_path, capsys, monkeypatch):
    from rexsearch import search

    for name in ("load_split", "ensure_ray", "start_run", "execute"):
        monkeypatch.setattr(search, name, lambda *a, **k: pytest.fail("refused before data and Ray"))
    base = ["run", "--flops-budget", "100M", "--run-dir", str(tmp_path / "r"), "--quiet"]
    cases = [
        (["--dataset", "mnist"], "--dataset must be one of cifar100, cifar10, fashion-mnist, folder"),
        (["--dataset", "folder"], "--dataset folder needs --data-dir PATH"),
        (
            ["--dataset", "folder", "--data-dir", str(tmp_path), "--objectives", "rank"],
            "needs the accuracy objective",
        ),
        (
            ["--dataset", "fashion-mnist", "--val-images", "60000"],
            "below Fashion-MNIST's 60,000 training images",
        ),
    ]
    for extra, problem in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert problem in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_an_unreadable_image_stops_the_run_before_ray(tmp_path, capsys, monkeypatch):
    from rexsearch import search

    for name in ("ensure_ray", "start_run", "execute"):
        monkeypatch.setattr(search, name, lambda *a, **k: pytest.fail("refused before Ray and run.json"))
    root = make_folder(tmp_path / "pets")
    (root / "eel" / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = ["run", "--flops-budget", "100M", "--dataset", "folder", "--data-dir", str(root)]
    assert main([*args, "--run-dir", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and f"{root / 'eel' / '2.jpg'} cannot be read" in err and "Traceback" not in err
    )
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- rexsearch train
def test_cli_train_on_fashion_mnist_records_the_data_set(tmp_path, monkeypatch, capsys):
    sums = write_fashion(tmp_path / "fm")
    monkeypatch.setenv("REXSEARCH_FASHION_MNIST_MD5", fashion_env(sums))
    config = tmp_path / "tiny.json"
    config.write_text(tiny_config().to_json())
    out = tmp_path / "out"
    args = ["train", "--config", str(config), "--epochs", "1", "--batch-size", "40", "--warmup-epochs", "0"]
    args += ["--device", "cpu", "--out", str(out), "--quiet"]
    assert main([*args, "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "fm")]) == 0
    assert "test top-1 on Fashion-MNIST" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == "fashion-mnist" and metrics["data"]["classes"] == 10
    assert metrics["test_images"] == 40 and json.loads((out / "config.json").read_text())["num_classes"] == 10
    root = make_folder(tmp_path / "pets", {"": 8})
    assert main([*args, "--dataset", "folder", "--data-dir", str(root), "--epochs", "2"]) == 2
    assert "holds a training with other settings" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_session")
@pytest.mark.skipif(not DEBIAN.is_dir(), reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN})")
def test_a_multi_day_cpu_run_is_refused_with_a_first_look(tmp_path, monkeypatch, capsys):
    """No fidelity flag, no GPU, no terminal: the defaults (days here) are refused before run.json,
    with a command that fits, and its estimate."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (DEBIAN,))
    run_dir = tmp_path / "run"
    args = ["run", "--dataset", "fashion-mnist", "--flops-budget", "100M", "--cpus-per-trial", "1"]
    assert main([*args, "--run-dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the defaults would take about" in err and "--trials 16 --epochs 3 --train-images 5000" in err, err
    assert not run_dir.exists()
