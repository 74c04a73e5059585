"""The Fashion-MNIST demo: both runs train, and the report shows their real numbers."""

import re

import pytest

from envconv.recipes.cli import main
from envconv.recipes.demo import expected_minutes, format_demo, run_demo, study_pace


def test_demo_trains_both_models_and_reports_them(tmp_path, fashion_root, capsys):
    summaries = run_demo(str(tmp_path), epochs=1, train_subset=64, root=str(fashion_root),
                         extra=["data.workers=0", "output.progress=off"], quiet=True)
    assert summaries["gaussian"]["method"] == "gaussian" and summaries["none"]["method"] == "none"
    assert len(summaries["gaussian"]["envelopes"]) == 5 and summaries["none"]["envelopes"] == []
    report = format_demo(summaries)
    for method, label in (("gaussian", "with envelopes"), ("none", "baseline")):
        err = summaries[method]["final_val"]["top1_err"]
        assert re.search(rf"{label}\s+top-1 {err:.2f}%", report)
    stem = summaries["gaussian"]["envelopes"][0]
    assert re.search(rf"conv1\s+1\s+{stem['sigma_mean']:.3f}", report)
    assert (tmp_path / "gaussian" / "last.pt").is_file() and (tmp_path / "none" / "last.pt").is_file()
    # The command line runs the same, replacing the demo's earlier run directories.
    assert main(["demo", "--epochs", "1", "--train-subset", "64", "--root", str(fashion_root), "--out-dir",
                 str(tmp_path), "--set", "data.workers=0"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("Expected: at most under a minute of training")  # 64 images, first
    assert "Fashion-MNIST test error (64 test images)" in out  # the fixture's t10k file holds 64
    assert "Learned sigma per layer" in out and re.search(r"baseline\s+top-1 \d+\.\d\d%", out)
    # ... and ends with the analysis report of the two models
    assert f"analysis report: {tmp_path / 'analysis' / 'report.html'}" in out
    report = (tmp_path / "analysis" / "report.md").read_text()
    assert "demo-gaussian vs demo-none" in report and "demo-none has no Gaussian envelopes" in report


def test_the_demo_puts_its_gap_beside_the_studys_seed_spread(tmp_path):
    import numpy as np

    from envconv.recipes.demo import _spread_lines, study_spread

    rows = ["run,table,label,seed,epochs,test_top1_err,probe_err,train_seconds",
            "none_seed0,1a,none,0,10,8.80,20.0,500", "gaussian_seed0,1a,ours,0,10,8.20,20.0,900",
            "gaussian_seed0,1e,ours k3,0,10,8.40,,",  # an evaluation row: not a run of its own
            "none_seed1,1a,none,1,10,8.50,20.0,500", "gaussian_seed1,1a,ours,1,10,8.70,20.0,900",
            "none_seed2,1a,none,2,10,9.00,20.0,500", "gaussian_seed2,1a,ours,2,10,8.60,20.0,900",
            "single-sigma_seed0,1d,single,0,10,7.00,20.0,900"]
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
    spread = study_spread(tmp_path / "results.csv")
    diffs = np.array([8.20 - 8.80, 8.70 - 8.50, 8.60 - 9.00])
    assert spread["n"] == 3 and spread["epochs"] == [10]
    assert spread["diff_mean"] == pytest.approx(diffs.mean()) and spread["diff_std"] == pytest.approx(diffs.std(ddof=1))
    half = 4.302652729911275 * diffs.std(ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert (spread["low"], spread["high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert spread["std"]["none"] == pytest.approx(np.std([8.80, 8.50, 9.00], ddof=1))
    small = "\n".join(_spread_lines(0.3, spread))
    assert "+0.30 points" in small and "says nothing about envelopes" in small
    assert "exceeds twice that spread" in "\n".join(_spread_lines(5.0, spread))
    assert study_spread(tmp_path / "missing.csv") is None
    assert "No study results" in "\n".join(_spread_lines(0.3, None))


def test_the_demo_expects_the_studys_median_pace(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text("run,table,label,seed,epochs,test_top1_err,probe_err,train_seconds\n"
                   "none_seed0,1a,none,0,10,8.6,,600\n"  # 60 s an epoch
                   "none_seed1,1a,none,1,10,8.6,,1000\n"  # 100
                   "none_seed2,1a,none,2,10,8.6,,800\n"  # 80: the median
                   "gaussian_seed0,1a,ours,0,10,8.5,,1200\n"  # 120
                   "gaussian_seed0,1e,ours k3,0,10,8.5,,\n"  # an evaluation row: no training time
                   "fixed-2_seed0,1h,fixed,0,10,9.0,,50\n")  # another entry
    pace = study_pace(csv)
    assert pace == {"none": 80.0, "gaussian": 120.0}
    assert expected_minutes(2, 20000, pace) == pytest.approx((80 + 120) * 2 / 60)
    assert expected_minutes(1, None, pace) == pytest.approx((80 + 120) * 3 / 60)  # all 60,000 images
    assert study_pace(tmp_path / "missing.csv") is None and expected_minutes(2, 20000, None) is None
