import pytest
import yaml

from envconv.recipes.study import load_plan
from study_helpers import write_plan


def test_a_plan_expands_to_named_runs_seed_by_seed(tmp_path):
    plan = load_plan(write_plan(tmp_path, seeds=(3, 7)))
    runs = plan.runs(tmp_path / "out")
    assert [r.name for r in runs] == ["none_seed3", "gaussian_seed3", "none_seed7", "gaussian_seed7"]
    by_name = {r.name: r.config for r in runs}
    assert by_name["gaussian_seed7"]["train"]["seed"] == 7
    assert by_name["gaussian_seed7"]["model"]["method"] == "gaussian"
    assert by_name["none_seed3"]["model"]["method"] == "none"
    assert by_name["none_seed3"]["output"]["dir"] == str(tmp_path / "out" / "none_seed3")
    assert by_name["none_seed3"]["data"]["synthetic_size"] == [256, 64]   # the base config's keys stay


@pytest.mark.parametrize("entry, message", [
    ({"name": "bad", "set": {"model.method": "gausian"}}, "entry 'bad'.*gausian"),
    ({"name": "bad", "set": {"model.method": "fixed", "model.options": {"sigmaa": 1.0}}}, "entry 'bad'.*sigmaa"),
    ({"name": "bad", "set": {"train.epoch": 3}}, "entry 'bad'.*epoch"),
    ({"name": "bad", "sett": {}}, r"entry 2 \(bad\).*sett"),
    ({"name": "a/b"}, "name 'a/b'"),
])
def test_a_bad_entry_fails_before_any_run_naming_it(tmp_path, entry, message):
    entries = [{"name": "none", "set": {"model.method": "none", "model.options": {}}}, entry]
    path = write_plan(tmp_path, entries=entries, extra={"evaluations": [], "claims": []})
    with pytest.raises(ValueError, match=message):
        load_plan(path)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, message", [
    ({"seed": [1]}, "unknown key"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"baseline": "nobody"}, "baseline 'nobody'"),
    ({"claims": [{"better": "gaussian", "than": "nobody"}]}, "claim 1.*'nobody'"),
    ({"evaluations": [{"name": "k4", "of": "gaussian", "envelope_size": 4}]}, "odd integer"),
    ({"evaluations": [{"name": "what", "of": "gaussian"}]}, "give envelope_size, object_scale, recalibrate_bn or"),
    ({"evaluations": [{"name": "bn", "of": "gaussian", "recalibrate_bn": -1}]}, "recalibrate_bn must be a number of"),
    ({"evaluations": [{"name": "bn", "of": "gaussian", "recalibrate_bn": True}]}, "recalibrate_bn must be a number of"),
    ({"evaluations": [{"name": "s0", "of": "gaussian", "object_scale": 0}]}, "object_scale must be a positive"),
])
def test_bad_plan_keys(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        load_plan(write_plan(tmp_path, extra=extra))


def test_the_bundled_study_plan_loads():
    from pathlib import Path

    plan = load_plan(Path(__file__).parents[3] / "studies" / "fashion_mnist.yaml")
    assert load_plan("fashion_mnist").entries == plan.entries  # the bundled plan, by name
    with pytest.raises(FileNotFoundError, match="bundled plans: fashion_mnist"):
        load_plan("no_such_plan")
    assert len(plan.seeds) >= 3
    assert {"none", "gaussian", "single-sigma", "conv-env", "cbs", "dw", "proj", "se"} <= {e.name for e in plan.entries}
    configs = {r.entry.name: r.config["model"] for r in plan.runs("out")[:len(plan.entries)]}
    assert configs["single-sigma"]["shared_sigma"] is True
    assert configs["conv-env"]["order"] == "conv-env"
    assert configs["fixed-2"]["options"] == {"sigma": 2.0}
    assert {e.envelope_size for e in plan.evaluations} == {3, "auto"}


def test_entries_may_have_their_own_seeds_and_only_selects_entries(tmp_path):
    path = write_plan(tmp_path, seeds=(0, 1))
    data = yaml.safe_load(path.read_text())
    data["entries"][1]["seeds"] = [0, 1, 2, 3]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = load_plan(path)
    assert [r.name for r in plan.runs(tmp_path / "out")] == [
        "none_seed0", "gaussian_seed0", "none_seed1", "gaussian_seed1", "gaussian_seed2", "gaussian_seed3"]
    assert [r.name for r in plan.runs(tmp_path / "out", only=["gaussian"])] == [
        "gaussian_seed0", "gaussian_seed1", "gaussian_seed2", "gaussian_seed3"]
    with pytest.raises(ValueError, match="no entry 'nonee'"):
        plan.runs(tmp_path / "out", only=["nonee"])
    data["entries"][1]["seeds"] = [1, 1]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ValueError, match="seeds must be a list of distinct integers"):
        load_plan(path)


def test_the_plan_keeps_its_own_name_whatever_its_entries_and_evaluations_are_called(tmp_path):
    # the bundled plan: its runs go to results/study-fashion_mnist, not to a directory named after an evaluation
    from pathlib import Path

    plan = load_plan(Path(__file__).resolve().parents[3] / "studies" / "fashion_mnist.yaml")
    assert plan.name == "fashion_mnist" and plan.evaluations and plan.evaluations[-1].name != plan.name
    named = load_plan(write_plan(tmp_path, extra={"name": "mine", "evaluations": [
        {"name": "gaussian-k3", "of": "gaussian", "envelope_size": 3}]}))
    assert named.name == "mine"
    assert named.runs(tmp_path / "out")[0].config["name"] == "mine-none_seed0"


def test_plan_values_keep_their_type_and_exact_text(tmp_path):
    path = write_plan(tmp_path, extra={"set": {"data.root": "/data/fashion mnist: v2", "data.val": "007",
                                               "train.lr": 0.05, "train.amp": "none"}})
    plan = load_plan(path)
    config = plan.run_config(plan.base_config(), plan.entries[0], 0, tmp_path / "out")
    assert config["data"]["root"] == "/data/fashion mnist: v2" and config["data"]["val"] == "007"
    assert config["train"]["lr"] == 0.05 and config["train"]["amp"] == "none"
