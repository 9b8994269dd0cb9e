"""``rexsearch compare`` on fake but realistic runs: EDFs, 10% groups, KS, mismatch refusal."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from support import runfixture

from rexsearch.cli import main
from rexsearch.compare import compare_runs, edf_figure, write_comparison
from rexsearch.errors import UserError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return [runfixture.make_run(base / f"space-{i}", seed=i) for i in range(3)]


def test_compare_draws_one_edf_per_run_and_writes_the_tables(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *(str(r.path) for r in runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verdict: " in printed
    c = compare_runs([r.path for r in runs])
    fig = edf_figure(c, "accuracy")
    assert len(fig.data) == 3
    for trace, r in zip(fig.data, c.runs, strict=True):
        values = np.sort(r.values("accuracy"))
        assert list(trace.x) == pytest.approx(list(100 * values))
        assert trace.y[-1] == 1.0 and trace.line.shape == "hv"
    html = (out / "compare.html").read_text()
    assert not re.search(r"<script[^>]*\ssrc\s*=", html, re.I)
    for fid in ("fig-edf-accuracy", "fig-edf-rank", "fig-profiles"):
        assert f'id="{fid}"' in html
    assert "Not random-sampler runs" in html  # the fixture's runs used TPE
    summary = pd.read_csv(out / "compare.csv")
    assert list(summary["run"]) == [r.path.name for r in runs]
    a, b = c.runs[0].values("accuracy"), c.runs[1].values("accuracy")
    ks = sps.ks_2samp(a, b)
    assert c.pairs[0].ks.statistic == pytest.approx(ks.statistic)
    assert f"{ks.pvalue:.3g}" in html
    top = np.sort(a)[::-1][: max(1, round(0.1 * len(a)))].mean()
    assert summary.loc[0, "top10_mean"] == pytest.approx(top)
    trials = pd.read_csv(out / "compare_trials.csv")
    assert set(trials["group10"].dropna()) <= {"top", "middle", "bottom"}
    assert trials["baseline"].isna().all()  # baselines are not samples of a space
    # outputs are not overwritten without --force
    assert main(["compare", str(runs[0].path), str(runs[1].path), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_verdict_names_the_dominating_space(runs):
    c = compare_runs([r.path for r in runs[:2]])
    p = c.pairs[0]
    if p.better:
        assert c.verdict.startswith(f"{p.better} (")
    else:
        assert c.verdict.startswith("No space dominates")


def test_mismatched_budgets_are_refused_unless_forced(runs, tmp_path, capsys):
    other = runfixture.make_run(tmp_path / "with-params", params_budget=4_000_000)
    assert main(["compare", str(runs[0].path), str(other.path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "params budget" in err and "--force" in err and "Traceback" not in err
    assert main(["compare", str(runs[0].path), str(other.path), "--out", str(tmp_path / "o"), "--force"]) == 0
    assert "compared despite a mismatch" in capsys.readouterr().out
    assert "Compared with --force although the runs differ" in (tmp_path / "o" / "compare.html").read_text()


def test_one_run_is_not_a_comparison(runs):
    with pytest.raises(UserError, match="at least two"):
        compare_runs([runs[0].path])


def test_fidelity_mismatch_is_found(runs, tmp_path):
    other = runfixture.make_run(tmp_path / "longer")
    meta = json.loads((other.path / "run.json").read_text())
    meta["settings"]["epochs"] = 10
    (other.path / "run.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="epochs"):
        compare_runs([runs[0].path, other.path])
    c = compare_runs([runs[0].path, other.path], force=True)
    assert c.forced and write_comparison(c, tmp_path / "f")["html"].exists()


def test_compare_html_carries_the_stand_in_banner(tmp_path):
    import html
    import json

    base = tmp_path / "runs"
    made = [runfixture.make_run(base / f"space-{i}", seed=i) for i in range(2)]
    for run in made:  # trained on a re-packed archive (a checksum override), as the examples were
        meta = run.path / "run.json"
        data = json.loads(meta.read_text())
        data["data"] = {"archive_md5": "39590fe2585e2020fde87009e28d5255", "cifar100": False}
        meta.write_text(json.dumps(data))
    paths = write_comparison(compare_runs([r.path for r in made]), tmp_path / "cmp")
    page = html.unescape(paths["html"].read_text())
    assert page.count("not CIFAR-100's") == 1 and "39590fe2585e2020fde87009e28d5255" in page
    assert page.index("not CIFAR-100's") < page.index('id="runs"')


def test_runs_with_a_latency_budget_only_compare(tmp_path, capsys):
    import json

    from rexsearch.latency import Correction, LatencyTable, environment

    # the run's own table file (never used to predict here: the trials' latencies are recorded)
    table = LatencyTable(environment("cpu", "torch", 1), 224, {}, Correction(0.0, 1.0))
    made = [runfixture.make_run(tmp_path / f"lat-{i}", seed=i) for i in range(2)]
    for run in made:  # a latency budget and no MACs budget, as `run --latency-budget` alone records
        table.save(run.path / "latency-table.json")
        meta = run.path / "run.json"
        data = json.loads(meta.read_text())
        data["settings"].update(flops_budget=None, latency_budget_ms=5.0)
        meta.write_text(json.dumps(data))
    out = tmp_path / "cmp"
    assert main(["compare", *(str(r.path) for r in made), "--out", str(out)]) == 0, capsys.readouterr().err
    page = (out / "compare.html").read_text()
    assert "latency budget (ms)" in page and "<td>5</td>" in page
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.html", "compare_trials.csv"]
