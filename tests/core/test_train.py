import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from support.synthetic import class_patterned

from rexsearch.augment import augment_batch, channels_last, crop_flip, normalize, take
from rexsearch.bench import bench_training
from rexsearch.cli import main
from rexsearch.datasets.splits import Split
from rexsearch.errors import UserError
from rexsearch.train import (
    EpochMetrics,
    NonFiniteLossError,
    Trainer,
    TrainSettings,
    evaluate_top1,
    load_checkpoint,
    save_checkpoint,
    train_proxy,
)


@pytest.fixture(scope="module")
def split() -> Split:
    x, y = class_patterned(6, seed=1)
    vx, vy = class_patterned(2, seed=2)
    return Split(x, y, vx, vy)


def fast(**kw) -> TrainSettings:
    return TrainSettings(**{"epochs": 2, "batch_size": 64, "lr": 0.2, "warmup_epochs": 0.5, **kw})


# ---------------------------------------------------------------------------- augmentation
def test_crop_flip_is_a_crop_of_the_padded_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = crop_flip(x, gen)
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    padded = F.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(16):
        crops = [padded[i, :, t : t + 32, s : s + 32] for t in range(9) for s in range(9)]
        plain = any(torch.equal(c, out[i]) for c in crops)
        flipped = any(torch.equal(c.flip(-1), out[i]) for c in crops)
        assert plain or flipped
        flips += flipped and not plain
    assert 0 < flips < 16


def test_normalize_take_and_resize():
    x = channels_last(torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8))
    assert torch.equal(take(x, torch.tensor([7, 2])), x[[7, 2]])
    out = normalize(torch.full((2, 3, 32, 32), 128, dtype=torch.uint8))
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert out[0, 0, 0, 0].item() == pytest.approx((128 / 255 - 0.5071) / 0.2673, rel=1e-5)
    big = augment_batch(x, torch.Generator().manual_seed(0), resolution=40)
    assert big.shape == (10, 3, 40, 40) and big.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------- training
def test_proxy_learns_class_patterns(tiny):
    x, y = class_patterned(15, seed=1)
    vx, vy = class_patterned(3, seed=2)
    seen: list[EpochMetrics] = []
    result = train_proxy(tiny, Split(x, y, vx, vy), fast(epochs=4), seen.append)
    assert [m.epoch for m in seen] == [1, 2, 3, 4]
    assert result.accuracy_curve == [m.val_top1 for m in seen]
    assert result.final_accuracy > 0.5  # chance is 0.01
    assert result.best_accuracy == max(result.accuracy_curve)
    assert seen[-1].train_loss < seen[0].train_loss
    assert all(m.seconds > 0 and m.images_per_s > 0 for m in seen)
    assert result.model.classifier.out_features == 100


def test_same_seed_same_numbers_and_global_rng_untouched(tiny, split):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = train_proxy(tiny, split, fast())
    after = torch.rand(3)
    b = train_proxy(tiny, split, fast())
    c = train_proxy(tiny, split, fast(seed=1))
    assert torch.equal(before, after)
    assert [m.train_loss for m in a.history] == [m.train_loss for m in b.history]
    assert a.accuracy_curve == b.accuracy_curve
    assert [m.train_loss for m in a.history] != [m.train_loss for m in c.history]


def test_resumed_training_equals_uninterrupted(tiny, split, tmp_path):
    straight = Trainer(tiny, fast(), split.train_y.numel())
    straight.fit(split.train_x, split.train_y, split.val_x, split.val_y)

    first = Trainer(tiny, fast(), split.train_y.numel())

    class Stop(Exception):
        pass

    def stop_after_one(m: EpochMetrics) -> None:
        save_checkpoint(first, tmp_path)
        raise Stop

    with pytest.raises(Stop):
        first.fit(split.train_x, split.train_y, split.val_x, split.val_y, stop_after_one)
    assert first.epoch == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-epoch1.pt",
        "checkpoint-epoch1.safetensors",
        "checkpoint.json",
    ]
    resumed = Trainer(tiny, fast(), split.train_y.numel())
    assert load_checkpoint(resumed, tmp_path) and resumed.epoch == 1
    resumed.fit(split.train_x, split.train_y, split.val_x, split.val_y)
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in straight.history]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    save_checkpoint(resumed, tmp_path)
    assert not (tmp_path / "checkpoint-epoch1.pt").exists()
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epoch"] == 2


def test_nan_loss_raises(tiny, split):
    with pytest.raises(NonFiniteLossError, match="NaN or infinite"):
        train_proxy(tiny, split, fast(lr=1e30))


def test_schedule_and_weight_decay_groups(tiny):
    trainer = Trainer(tiny, TrainSettings(epochs=10, lr=0.5, warmup_epochs=2, batch_size=100), 1000)
    assert trainer.steps_per_epoch == 10 and trainer.warmup_steps == 20
    lrs = [trainer.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.5 / 20) and lrs[19] == pytest.approx(0.5)
    assert max(lrs) == pytest.approx(0.5) and lrs[-1] < 0.001
    assert all(a >= b for a, b in itertools.pairwise(lrs[19:]))
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert trainer.optimizer.defaults["nesterov"]


def test_other_resolution_and_contiguous_layout(tiny, split):
    result = train_proxy(tiny, split, fast(epochs=1, resolution=40, channels_last=False))
    assert len(result.accuracy_curve) == 1 and 0 <= result.final_accuracy <= 1
    model = result.model
    acc = evaluate_top1(model, split.val_x, split.val_y, resolution=40)
    assert acc == result.final_accuracy
    assert math.isclose(acc * split.val_y.numel(), round(acc * split.val_y.numel()))


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="batch_size must be an integer >= 2"):
        TrainSettings(batch_size=1)
    with pytest.raises(UserError, match="warmup_epochs must be between 0 and epochs"):
        TrainSettings(epochs=2, warmup_epochs=3)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": float("inf")}, "lr must be a finite positive number, got inf"),
        ({"lr": float("nan")}, "lr must be a finite positive number, got nan"),
        ({"lr": "0.1"}, "lr must be a finite positive number, got '0.1'"),
        ({"lr": 0}, "lr must be a finite positive number, got 0"),
        ({"batch_size": "128"}, "batch_size must be an integer >= 2 (BatchNorm needs two images), got '128'"),
        ({"batch_size": 10**9}, "batch_size must be at most 65,536, got 1000000000"),
        ({"batch_size": 64.0}, "batch_size must be an integer >= 2 (BatchNorm needs two images), got 64.0"),
        ({"epochs": 2.5}, "epochs must be a positive integer, got 2.5"),
        ({"epochs": True}, "epochs must be a positive integer, got True"),
        ({"seed": -1}, "seed must be an integer in [0, 2^32), got -1"),
        ({"seed": 2**32}, "seed must be at most 4,294,967,295, got 4294967296"),
        ({"momentum": float("nan")}, "momentum must be in [0, 1), got nan"),
        ({"weight_decay": float("inf")}, "weight_decay must be a finite number >= 0, got inf"),
        ({"warmup_epochs": float("nan")}, "warmup_epochs must be between 0 and epochs, got nan"),
        ({"resolution": 4}, "resolution must be an integer >= 8, got 4"),
        ({"amp": "yes"}, "amp must be true or false, got 'yes'"),
        ({"device": None}, "device must be auto, cpu, cuda or cuda:N, got None"),
    ],
)
def test_training_numbers_are_validated_in_one_place(settings, message):
    with pytest.raises(UserError) as err:
        TrainSettings(**settings)
    assert str(err.value) == message


def test_train_cli_uses_the_same_validation(capsys):
    from rexsearch.cli import main

    assert main(["train", "--preset", "rexnet-1.0", "--lr", "inf"]) == 2
    assert "lr must be a finite positive number, got inf" in capsys.readouterr().err


def test_bench_reports_both_loops(tiny):
    res = bench_training(tiny, batch_size=32, steps=2, repeats=1)
    for key in ("trainer_images_per_s", "naive_images_per_s", "speedup", "pipeline_images_per_s"):
        assert res[key] > 0
    assert res["speedup"] == pytest.approx(res["trainer_images_per_s"] / res["naive_images_per_s"])
    assert res["fraction_of_peak"] > 0 and res["peak_rss_mb"] > 0


# ---------------------------------------------------------------------------- CLI
@pytest.fixture
def cli_args(cifar_archive, tiny, tmp_path, monkeypatch):
    path, md5 = cifar_archive
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", md5)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / path.name).write_bytes(path.read_bytes())
    tiny.save(tmp_path / "tiny.json")
    out = tmp_path / "out"
    base = ["train", "--config", str(tmp_path / "tiny.json"), "--data-dir", str(data_dir), "--out", str(out)]
    return [*base, "--batch-size", "50", "--warmup-epochs", "0.5"], out


def test_cli_train_checkpoints_and_resumes(cli_args, capsys, monkeypatch):
    args, out = cli_args
    real_epoch = Trainer.train_epoch
    calls = []

    def interrupted(self, *a, **kw):
        calls.append(self.epoch)
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, *a, **kw)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    assert main([*args, "--epochs", "2"]) == 130
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert checkpoint["epoch"] == 1 and (out / checkpoint["weights"]).is_file()
    assert json.loads((out / "config.json").read_text())["name"] == "tiny@proxy32"
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 1
    capsys.readouterr()

    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    assert main([*args, "--epochs", "2"]) == 0
    captured = capsys.readouterr()
    assert "resuming after epoch 1" in captured.err and "epoch 2/2" in captured.err
    assert "test top-1" in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics["epochs"]] == [1, 2] and metrics["finished"]
    assert metrics["test_images"] == 200 and metrics["final_test_top1"] == metrics["epochs"][-1]["val_top1"]
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 2

    assert main([*args, "--epochs", "3"]) == 2
    assert "other settings (epochs 2, now 3)" in capsys.readouterr().err


def test_cli_train_bad_input_exits_2(cli_args, capsys, tiny, tmp_path):
    args, _ = cli_args
    assert main([*args, "--epochs", "1", "--batch-size", "1"]) == 2
    assert "batch_size must be an integer >= 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([*args, "--lr", "-1"])
    assert info.value.code == 2
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "tiny.json"), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rexsearch: error: CIFAR-100") and "--objectives rank" in err
    assert "Traceback" not in err


def test_cli_bench_train_json(tiny, tmp_path, capsys):
    tiny.save(tmp_path / "tiny.json")
    argv = ["bench", "train", "--config", str(tmp_path / "tiny.json"), "--steps", "2", "--repeats", "1"]
    assert main([*argv, "--batch-size", "16", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"trainer_images_per_s", "naive_images_per_s", "speedup", "pipeline_images_per_s"} <= set(res)
    assert res["config"] == "tiny@proxy32" and res["batch_size"] == 16
