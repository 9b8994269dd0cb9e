"""run.json records the settings once (format rexsearch.run/2), and run.json/1 files still load."""

from __future__ import annotations

import json

import pytest
from support import runfixture

from rexsearch.cli import main
from rexsearch.rundir import RUN_FORMAT, RUN_FORMAT_V1, load_run
from rexsearch.search import SearchSettings, settings_from_run
from rexsearch.space import Budget


def test_an_old_run_json_reads_as_the_current_one(tmp_path):
    new = runfixture.make_run(tmp_path / "new", seed=3, params_budget=6_000_000)
    old = runfixture.make_run(tmp_path / "old", seed=3, params_budget=6_000_000, layout="v1")
    assert json.loads((old.path / "run.json").read_text())["format"] == RUN_FORMAT_V1
    assert new.data["format"] == old.data["format"] == RUN_FORMAT
    for info in (new, old):
        assert info.budget == Budget(runfixture.BUDGET, 6_000_000, runfixture.RESOLUTION)
        assert (info.seed, info.sampler, info.study_name, info.objectives) == (
            3,
            "tpe",
            "rexsearch",
            ["accuracy", "rank"],
        )
        assert info.fidelity == {
            "epochs": runfixture.EPOCHS,
            "train_images": 5000,
            "batch_size": 128,
            "val_images": 1000,
        }
        assert info.storage_url == f"sqlite:///{info.path / 'study.db'}"
        assert len(info.open_study().trials) > 10
    assert "budget" not in old.data and "seed" not in old.data  # one record in memory too


def test_the_settings_record_and_the_run_build_the_same_budget(tmp_path):
    settings = SearchSettings(
        run_dir=str(tmp_path / "run"), flops_budget=250_000_000, params_budget=3_000_000, resolution=192,
        channel_multiple=8, objectives=("rank",), trials=3,
    )  # fmt: skip
    runfixture.make_run(tmp_path / "run", objectives=("rank",))
    meta = tmp_path / "run" / "run.json"
    data = json.loads(meta.read_text())
    data["settings"] = {**settings.to_dict(), "storage": None}
    meta.write_text(json.dumps(data))
    info = load_run(tmp_path / "run")
    assert info.budget == settings.budget == settings_from_run(info).budget
    assert info.budget == Budget(250_000_000, 3_000_000, 192, channel_multiple=8)
    assert "widths multiples of 8" in info.describe_budget()


def test_resume_refuses_an_old_run_json_without_its_settings(tmp_path, capsys):
    run = runfixture.make_run(tmp_path / "run", objectives=("rank",), layout="v1")
    assert main(["resume", str(run.path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no 'settings' object; this run cannot be resumed" in err and err.count("\n") == 1


@pytest.mark.parametrize("layout", ["current", "v1"])
def test_report_and_compare_read_either_layout(tmp_path, capsys, layout):
    runs = [runfixture.make_run(tmp_path / f"r{i}", seed=i, layout=layout) for i in range(2)]
    assert main(["report", str(runs[0].path)]) == 0, capsys.readouterr().err
    page = (runs[0].path / "report.html").read_text()
    assert "epochs 3" in page and "tpe" in page
    out = tmp_path / "cmp"
    assert main(["compare", *(str(r.path) for r in runs), "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "compare.html").is_file()
