"""The benchmark scripts run and report well-formed results (no assertion on timing)."""

import pytest
import torch
from torch import nn

import envconv
from benchmarks import layer_speed, model_speed
from benchmarks.timing import paired_ratio


def test_paired_ratio_is_well_formed():
    calls = []
    r = paired_ratio(lambda: calls.append("a"), lambda: calls.append("b"), repeats=4, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then alternating order
    assert r.repeats == 4 and r.low <= r.q1 <= r.median <= r.q3 <= r.high and r.ms_a > 0


def test_layer_benchmark_smoke():
    rows = layer_speed.run(batch=1, repeats=1, sizes=(3,), places=["stage4 identity"], log=lambda *a: None)
    versus = {r["versus"] for r in rows}
    assert {"clone", "naive separable", "full kxk depthwise"} <= versus
    assert len(rows) == 2 * 2 * len(versus)  # layouts x modes x competitors
    assert all(r["stride"] == 2 for r in rows)
    for r in rows:  # one pair: the ratio is that pair's two times, as timed
        assert r["ratio"]["median"] == pytest.approx(r["ratio"]["ms_a"] / r["ratio"]["ms_b"], rel=1e-9)
    assert "| stage4 identity | channels_last |" in layer_speed.markdown(rows)


def test_model_benchmark_smoke_and_memory_count():
    result = model_speed.run("small_resnet20", batch=2, image_size=16, repeats=1, num_classes=3, log=lambda *a: None)
    assert result["fastest_plain_layout"] in ("nchw", "channels_last")
    for layout in ("nchw", "channels_last"):
        mem = result["layouts"][layout]["memory"]
        plain, conv = mem["plain"], mem["converted"]
        # parameters, gradients and momentum are the same size; the envelopes add 99 sigmas (float32)
        assert plain["gradients"] == plain["parameters"] == plain["optimizer_state"]
        assert conv["parameters"] - plain["parameters"] == 4 * (3 + 16 + 16 + 32 + 32)
        assert conv["saved_for_backward"] > plain["saved_for_backward"] > 0
    assert "| channels_last" in model_speed.markdown(result)


def test_training_memory_counts_saved_tensors_by_storage():
    model = nn.Sequential(nn.Linear(8, 4, bias=False))
    x = torch.randn(16, 8, requires_grad=True)
    mem = model_speed.training_memory(model, x, torch.zeros(16, dtype=torch.long))
    assert mem["parameters"] == 8 * 4 * 4
    # linear saves its input (16 x 8 floats) and weight; cross-entropy its log-softmax (16 x 4) and target
    assert mem["saved_for_backward"] >= (16 * 8 + 8 * 4 + 16 * 4) * 4 + 16 * 8


def test_results_are_written_atomically_with_the_machine(tmp_path, monkeypatch):
    import json

    from benchmarks import run_all

    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    base = run_all.save({"model": {"x": 1}}, "model", "## Model level\n| a |")
    data = json.loads(base.with_suffix(".json").read_text())
    assert data["model"] == {"x": 1} and data["machine"]["threads"] == torch.get_num_threads()
    assert base.name.endswith("-model") and "| a |" in base.with_suffix(".md").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_training_step_breakdown_attributes_the_envelope_to_our_ops():
    rows = model_speed.breakdown("small_resnet20", batch=2, image_size=16, steps=1, rounds=1, num_classes=3)
    by_op = {r["op"]: r for r in rows}
    total = rows[-1]
    assert total["op"] == "total"
    assert abs(total["plain"] - sum(r["plain"] for r in rows[:-1])) < 1e-9
    assert abs(total["extra"] - (total["converted"] - total["plain"])) < 1e-9
    # the plain model never runs our op; the converted one does, forward and backward
    for op in ("envconv::envelope_conv", "envconv::envelope_backward"):
        assert by_op[op]["plain"] == 0 and by_op[op]["converted"] > 0
    assert [r["extra"] for r in rows[:-1]] == sorted((r["extra"] for r in rows[:-1]), reverse=True)
    table = model_speed.breakdown_markdown(rows, top=len(rows))
    assert "| envconv::envelope_backward | 0.000 |" in table and table.splitlines()[-1].startswith("| total |")


def test_gpu_benchmark_plumbing_on_cpu(tmp_path, monkeypatch):
    """``benchmarks.gpu --device cpu --quick``: every table row is produced and the results file written."""
    import json

    from benchmarks import gpu, run_all

    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    monkeypatch.setattr(gpu, "PLACES", gpu.PLACES[:1] + gpu.PLACES[-1:])  # stem and stage 4 identity
    result = gpu.main(gpu.get_args_parser().parse_args(["--device", "cpu", "--quick"]))
    models = result["model"]
    assert {(r["precision"], r["layout"], r["impl"]) for r in models} == {
        (p, f, i) for p in ("fp32", "bf16") for f in ("nchw", "channels_last") for i in ("auto", "separable")}
    assert all(r["training_step_k9"]["median"] > 0 and r["memory_ratio"] is None for r in models)
    layers = result["layers"]
    assert len(layers) == 2 * 2 * 2 * 2 * 2  # places x layouts x sizes x modes x (separable, full k x k)
    written = json.loads((tmp_path / (result["written"].rsplit("/", 1)[-1] + ".json")).read_text())
    assert written["settings"]["device"] == "cpu"
    markdown = (tmp_path / (result["written"].rsplit("/", 1)[-1] + ".md")).read_text()
    assert "| stage4 identity | channels_last |" in markdown


def test_nd_benchmark_smoke():
    from benchmarks import nd_speed

    layer_rows = nd_speed.layers(quick=True, repeats=1, log=lambda *a: None)
    assert {(r["layout"], r["per_axis"]) for r in layer_rows if r["shape"][2:] == [4, 8, 8]} == {
        (layout, per_axis) for layout in ("ncdhw", "channels_last_3d") for per_axis in (False, True)}
    model_rows = nd_speed.models(quick=True, repeats=1, names=("audio_cnn",), log=lambda *a: None)
    # the envelope + conv op keeps only its input: the converted step holds no more than the sigmas
    assert 1 <= model_rows[0]["memory_ratio"] < 1.01 and model_rows[0]["training_step_k9"]["median"] > 0
    text = nd_speed.markdown(layer_rows, model_rows)
    assert "| audio_cnn | (2, 1, 1600) | ncl |" in text and "| r3d_18 layer2 (3-D) | (1, 8, 4, 8, 8) |" in text
    kernel_rows = nd_speed.kernel_choice(quick=True, repeats=1, log=lambda *a: None)
    if envconv.ops.cpu.available():
        assert {(r["per_axis"], r["stride"]) for r in kernel_rows if r["layout"] == "ncl"} == {
            (per_axis, stride) for per_axis in (False, True) for stride in (1, 2)}
        assert "| audio stem (1-D) | (2, 1, 1600) | ncl | per axis | 2 |" in nd_speed.kernel_markdown(kernel_rows)
    size_rows = nd_speed.axis_sizes(quick=True, repeats=1, log=lambda *a: None)
    assert {(r["layout"], tuple(r["sizes"])) for r in size_rows} == {
        (layout, sizes) for layout in ("ncdhw", "channels_last_3d") for sizes in nd_speed.SIZES}
    assert "| r3d_18 layer2 (3-D) | (1, 8, 4, 8, 8) | ncdhw | (3, 9, 9) |" in nd_speed.sizes_markdown(size_rows)


def test_peers_layer_table_builds_every_replacement_of_one_strided_conv():
    from benchmarks import peers_speed

    pytest.importorskip("timm", reason="timm is not installed")
    variants = peers_speed._place_variants(channels=8)
    plain = variants.pop("plain conv")()
    x = torch.randn(1, 8, 12, 12)
    for name, build in variants.items():
        try:
            module = build()
        except ImportError:  # a peer package that is not installed
            continue
        assert module(x).shape == plain(x).shape == (1, 8, 6, 6), name  # every one replaces the stride-2 conv
    fake = {"count": 7, "median": 1.5, "q1": 1.25, "q3": 1.75}
    result = {"date": "2026-12-06", "batch": 8, "machine": {"cpu": "CPU", "threads": 2},
              "models": [{"row": "envconv (ours)", "training_k9": fake, "inference": fake, "memory": 1.0,
                          "extra_parameters": 0.0001}, {"row": "DCLS", "skipped": "no module named DCLS"},
                         {"row": "DCLS, kernels frozen (inference only)", "inference": fake}],
              "layer": [{"row": "envconv (ours)", "forward": fake, "forward+backward": fake}]}
    table = peers_speed.markdown(result)
    assert "| envconv (ours) | 1.500x [1.250-1.750] | 1.500x [1.250-1.750] | 1.000x | +0.0% |" in table
    assert "| DCLS | skipped: no module named DCLS |" in table
    assert "| DCLS, kernels frozen (inference only) | - | 1.500x [1.250-1.750] | - | - |" in table


def test_peers_on_the_studys_small_net_build_every_row_and_report_the_net():
    from benchmarks import peers_speed

    x = torch.randn(2, 1, 28, 28)
    plain = peers_speed._small("none")()
    for name, (build, _, _) in peers_speed.SMALL_ROWS.items():
        try:
            model = build()
        except ImportError:  # a peer package that is not installed
            continue
        assert model(x).shape == plain(x).shape == (2, 10), name
        assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) >= 1
    fake = {"count": 7, "median": 1.375, "q1": 1.25, "q3": 1.5}
    table = peers_speed.markdown({"date": "2026-12-07", "batch": 128, "net": "small_resnet20",
                                  "machine": {"cpu": "CPU", "threads": 2}, "layer": [],
                                  "models": [{"row": "envconv (ours)", "training_k9": fake, "inference": fake,
                                              "memory": 1.0, "extra_parameters": 0.0}]})
    assert table.startswith("## envconv and its peers on small_resnet20 (2026-12-07, CPU, 2 threads)")
    assert "batch 128, 1 x 28 x 28" in table and "layer2.0.conv2" not in table
