"""YAML configs: loading, ``base`` inheritance, ``--set`` overrides, validation, the bundled configs."""

import pytest
import yaml

from envconv.recipes.config import (
    DEFAULTS,
    apply_overrides,
    bundled_configs,
    create_model_from_config,
    dump_config,
    load_config,
    resolve_config,
    validate_config,
)


def test_overrides_parse_yaml_values_and_nest():
    cfg = apply_overrides({"train": {"lr": 0.1}}, ["train.lr=0.4", "train.amp=bf16", "model.options={sigma_init: 1}",
                                                   "data.mean=[0.5, 0.5]", "train.compile=true", "data.root=null",
                                                   "name=x"])
    assert cfg == {"train": {"lr": 0.4, "amp": "bf16", "compile": True}, "data": {"mean": [0.5, 0.5], "root": None},
                   "model": {"options": {"sigma_init": 1}}, "name": "x"}
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["train.lr"])


def test_unknown_keys_and_bad_choices_are_named():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lrr'\] in section 'train'"):
        validate_config({"train": {"lrr": 0.1}})
    with pytest.raises(ValueError, match="unknown config section"):
        validate_config({"trian": {}})
    with pytest.raises(ValueError, match="train.amp must be one of"):
        validate_config({"train": {"amp": "fp8"}})
    with pytest.raises(ValueError, match="train.epochs must be an integer >= 1"):
        validate_config({"train": {"epochs": 0}})
    with pytest.raises(ValueError, match="train.lr must be a number >= 0"):
        validate_config({"train": {"lr": "fast"}})
    assert validate_config({"model": {"envelope_size": [3, 9, 9]}})["model"]["envelope_size"] == [3, 9, 9]
    for bad in (4, [3, 4], [], [3, 3, 3, 3], True):
        with pytest.raises(ValueError, match="model.envelope_size must be an odd positive integer, a list"):
            validate_config({"model": {"envelope_size": bad}})


def test_validate_fills_every_default_and_keeps_order():
    full = validate_config({"name": "a", "train": {"epochs": 3}})
    assert list(full) == ["name", *DEFAULTS]
    assert full["train"]["epochs"] == 3 and full["train"]["lr"] == DEFAULTS["train"]["lr"]
    assert yaml.safe_load(dump_config(full)) == full  # dumps round-trip


def test_base_inheritance_and_name(tmp_path):
    (tmp_path / "parent.yaml").write_text("model: {name: small_resnet32, options: {sigma_init: 1.0}}\n"
                                          "train: {epochs: 7, lr: 0.3}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntrain: {epochs: 2}\nmodel: {options: {}}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg == {"name": "child", "model": {"name": "small_resnet32", "options": {}},
                   "train": {"epochs": 2, "lr": 0.3}}  # sections merge key by key; options is replaced whole
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        load_config(tmp_path / "loop.yaml")


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="bundled configs: .*imagenet_resnet50"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


def test_imagenet_config_is_the_papers_recipe():
    cfg = resolve_config("imagenet_resnet50")
    train, model, data = cfg["train"], cfg["model"], cfg["data"]
    # Sec. 3: SGD momentum 0.9, weight decay 1e-4, lr 0.1 at batch 256, /10 every 30 epochs, 120 epochs, raw sigma 0
    assert (train["momentum"], train["weight_decay"], train["lr"], train["base_batch_size"]) == (0.9, 1e-4, 0.1, 256)
    assert (train["schedule"], train["step_size"], train["gamma"], train["epochs"]) == ("step", 30, 0.1, 120)
    assert train["warmup_epochs"] == 0 and train["nesterov"] is False and train["label_smoothing"] == 0
    assert model["name"] == "resnet50" and model["method"] == "gaussian" and model["options"] == {"sigma_init": 0.0}
    assert (model["envelope_size"], model["where"], model["stem"]) == (9, "downsample", "paper")
    assert (data["augment"], data["image_size"], data["eval_resize"]) == ("imagenet", 224, 256)
    assert "sigma_weight_decay" in load_config("imagenet_resnet50")["train"]  # an explicit choice in the file
    baseline = resolve_config("imagenet_resnet50_baseline")
    assert baseline["model"]["method"] == "none"
    assert {k: v for k, v in baseline.items() if k not in ("name", "model")} == \
        {k: v for k, v in cfg.items() if k not in ("name", "model")}


def test_table_1i_variants_differ_only_in_the_model():
    base = resolve_config("imagenet_resnet50")
    for name, arch in (("imagenet_resnet34", "resnet34"), ("imagenet_resnet101", "resnet101"),
                       ("imagenet_resnext50", "resnext50_32x4d")):
        cfg = resolve_config(name)
        assert cfg["model"]["name"] == arch
        assert cfg["train"] == base["train"] and cfg["data"] == base["data"]
        assert resolve_config(f"{name}_baseline")["model"]["method"] == "none"


@pytest.mark.parametrize("name", bundled_configs())
def test_every_bundled_config_validates_and_builds(name):
    pytest.importorskip("torchvision")
    cfg = resolve_config(name)
    assert cfg["name"] == name
    model = create_model_from_config(cfg["model"])
    n_env = sum(1 for n, _ in model.named_modules() if n.endswith("envelope"))
    # stem + 2 per downsampling stage: 3 stages in ResNet-20/56 (5), 4 in the ResNet-18/50 layouts (7)
    three_stages = cfg["model"]["name"] in ("small_resnet20", "small_resnet56")
    assert n_env == (0 if cfg["model"]["method"] == "none" else (5 if three_stages else 7))


def test_yaml_on_off_mean_on_off_for_the_progress_bar():
    assert validate_config(apply_overrides({}, ["output.progress=off"]))["output"]["progress"] == "off"
    assert validate_config(apply_overrides({}, ["output.progress=on"]))["output"]["progress"] == "on"


def test_scientific_notation_is_a_number_in_overrides_and_files(tmp_path):
    from envconv.recipes.config import resolve_config

    config = resolve_config("fashion_mnist_resnet20", ["train.lr=1e-3", "train.weight_decay=5.0e-4"])
    assert config["train"]["lr"] == 1e-3 and config["train"]["weight_decay"] == 5e-4
    (tmp_path / "c.yaml").write_text("base: fashion_mnist_resnet20\ntrain: {lr: 2E-2, momentum: .9}\n")
    config = resolve_config(tmp_path / "c.yaml", [])
    assert config["train"]["lr"] == 0.02 and config["train"]["momentum"] == 0.9


def test_path_overrides_are_kept_as_text():
    from envconv.recipes.config import resolve_config

    config = resolve_config("fashion_mnist_resnet20", ["output.dir=runs/exp #2: b", "data.root=null"])
    assert config["output"]["dir"] == "runs/exp #2: b" and config["data"]["root"] is None


def test_a_warm_up_as_long_as_the_run_is_refused_with_the_fix(tmp_path, monkeypatch, capsys):
    from envconv.recipes.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "fashion_mnist_resnet20", "--set", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "train.warmup_epochs must be a whole number below train.epochs=1, got 1" in err
    assert "--set train.warmup_epochs=0" in err
    assert list(tmp_path.iterdir()) == []  # refused before anything is created


@pytest.mark.parametrize("name", bundled_configs())
def test_a_one_epoch_run_of_every_bundled_config_is_valid_or_says_what_to_set(name):
    config = load_config(name)
    if config.get("train", {}).get("warmup_epochs", 0) >= 1:
        with pytest.raises(ValueError, match=r"--set train.warmup_epochs=0"):
            resolve_config(name, ["train.epochs=1"])
        resolve_config(name, ["train.epochs=1", "train.warmup_epochs=0"])
    else:
        resolve_config(name, ["train.epochs=1"])
