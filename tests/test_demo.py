"""The Fashion-MNIST demo: both runs train, and the report shows their real numbers."""

import re

from envconv.cli import main
from envconv.demo import format_demo, run_demo


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
    assert "Fashion-MNIST test error (64 test images)" in out  # the fixture's t10k file holds 64
    assert "Learned sigma per layer" in out and re.search(r"baseline\s+top-1 \d+\.\d\d%", out)
    # ... and ends with the analysis report of the two models
    assert f"analysis report: {tmp_path / 'analysis' / 'report.html'}" in out
    report = (tmp_path / "analysis" / "report.md").read_text()
    assert "demo-gaussian vs demo-none" in report and "demo-none has no Gaussian envelopes" in report
