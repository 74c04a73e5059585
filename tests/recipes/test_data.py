"""Datasets and loaders: the IDX reader, Fashion-MNIST, synthetic data, transforms, samplers."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from envconv.recipes.config import DEFAULTS, validate_config
from envconv.recipes.data import (
    FASHION_MNIST_ROOT,
    CropFlip,
    FashionMNIST,
    Normalize,
    ShardSampler,
    build_dataset,
    build_datasets,
    build_loader,
    read_idx,
)

REAL = Path(FASHION_MNIST_ROOT)


def test_read_idx_matches_a_hand_built_file(tmp_path):
    values = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3i", 2, 3, 4) + values.tobytes()
    (tmp_path / "a.idx").write_bytes(raw)
    with gzip.open(tmp_path / "a.idx.gz", "wb") as f:
        f.write(raw)
    for name in ("a.idx", "a.idx.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == torch.uint8 and np.array_equal(out.numpy(), values)


@pytest.mark.parametrize("raw, message", [
    (b"\x00\x00\x0d\x01" + struct.pack(">i", 1) + b"\x00\x00\x00\x00", "unsigned bytes"),  # float32 type
    (b"\x00\x00\x08\x02" + struct.pack(">i", 2), "truncated IDX header"),
    (b"\x00\x00\x08\x01" + struct.pack(">i", 5) + b"\x01\x02", "header says"),
])
def test_read_idx_rejects_bad_files(tmp_path, raw, message):
    (tmp_path / "bad").write_bytes(raw)
    with pytest.raises(ValueError, match=message):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_idx_files(fashion_root):
    data = FashionMNIST(fashion_root, "train")
    assert len(data) == 128 and len(data.classes) == 10
    image, label = data[13]
    raw = read_idx(fashion_root / "train-images-idx3-ubyte.gz")[13]
    torch.testing.assert_close(image, raw[None].float() / 255)
    assert label == 13 % 10
    assert len(FashionMNIST(fashion_root, "test")) == 64


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz not found"):
        FashionMNIST(tmp_path)


@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    train, test = FashionMNIST(REAL, "train"), FashionMNIST(REAL, "test")
    assert (len(train), len(test)) == (60000, 10000)
    # The published class balance: 6,000 training and 1,000 test images per class.
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    assert train.images.shape == (60000, 28, 28)
    assert int(train.targets[0]) == 9  # the first training image is an ankle boot
    mean = train.images.double().mean() / 255
    assert float(mean) == pytest.approx(0.2860, abs=1e-4)  # the mean in the bundled config


def test_crop_flip_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    image = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    windows = {(t, left, flip) for t in range(5) for left in range(5) for flip in (0, 1)}
    seen = set()
    for _ in range(200):
        out = CropFlip(5, 2)(image)
        match = [(t, left, f) for t, left, f in windows
                 if torch.equal(out, padded[:, t:t + 5, left:left + 5].flip(-1 if f else ()))]
        assert match, "every output is a window of the zero-padded image, maybe flipped"
        seen.update(match)
    assert len(seen) > 30  # many offsets and both flips occur
    with pytest.raises(ValueError, match="larger than the padded image"):
        CropFlip(10, 1)(image)


def test_normalize_checks_channels():
    out = Normalize([0.5], [0.25])(torch.full((1, 2, 2), 1.0))
    assert torch.equal(out, torch.full((1, 2, 2), 2.0))
    with pytest.raises(ValueError, match="3 channels but data.mean/std have 1"):
        Normalize([0.5], [0.25])(torch.zeros(3, 2, 2))


def test_dataset_config_errors(fashion_root):
    cfg = validate_config({"data": {"dataset": "fashion_mnist", "root": str(fashion_root)}})["data"]
    with pytest.raises(ValueError, match="set model.in_chans=1"):
        build_dataset({**cfg, "mean": [0, 0, 0], "std": [1, 1, 1]}, "train", in_chans=3, num_classes=10)
    with pytest.raises(ValueError, match="object_scale=1.5 are 42x42, larger than the data.image_size=40 canvas"):
        build_dataset({**cfg, "image_size": 40, "object_scale": 1.5}, "train", in_chans=1, num_classes=10)
    with pytest.raises(ValueError, match="augment=imagenet .* needs data.dataset=imagefolder"):
        build_dataset({**cfg, "augment": "imagenet"}, "train", in_chans=1, num_classes=10)
    with pytest.raises(ValueError, match="model.num_classes is 5"):
        build_dataset(cfg, "train", in_chans=1, num_classes=5)
    with pytest.raises(ValueError, match="data.train must name a folder"):
        build_dataset({**cfg, "dataset": "imagefolder"}, "train", in_chans=1, num_classes=10)
    with pytest.raises(FileNotFoundError, match="image folder /nonexistent does not exist"):
        build_dataset({**cfg, "dataset": "imagefolder", "val": "/nonexistent"}, "val", in_chans=1, num_classes=10)


def test_subsets_are_fixed_and_sized(fashion_root):
    cfg = validate_config({"data": {"dataset": "fashion_mnist", "root": str(fashion_root), "train_subset": 50}})["data"]
    a = build_dataset(cfg, "train", 1, 10)
    b = build_dataset(cfg, "train", 1, 10)
    assert len(a) == 50 and a.indices == b.indices and len(set(a.indices)) == 50


def test_imagefolder(tmp_path):
    pytest.importorskip("torchvision")
    from PIL import Image

    for split in ("train", "val"):
        for c, colour in enumerate(((255, 0, 0), (0, 0, 255))):
            folder = tmp_path / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), colour).save(folder / f"{i}.png")
    cfg = validate_config({"data": {"dataset": "imagefolder", "train": str(tmp_path / "train"),
                                    "val": str(tmp_path / "val"), "image_size": 24, "eval_resize": 28,
                                    "augment": "imagenet", "mean": [0, 0, 0], "std": [1, 1, 1]}})["data"]
    val = build_dataset(cfg, "val", 3, 2)
    image, label = val[3]
    assert image.shape == (3, 24, 24) and label == 1
    assert torch.allclose(image[2], torch.ones(24, 24)) and torch.allclose(image[0], torch.zeros(24, 24))
    train = build_dataset(cfg, "train", 3, 2)
    assert train[0][0].shape == (3, 24, 24)
    with pytest.raises(FileNotFoundError, match="not an image folder"):
        (tmp_path / "empty").mkdir()
        build_dataset({**cfg, "val": str(tmp_path / "empty")}, "val", 3, 2)


def test_loaders_split_the_data_between_processes():
    data = torch.utils.data.TensorDataset(torch.arange(10).float(), torch.arange(10))
    shards = [list(ShardSampler(10, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))  # every index once, none twice
    loaders = [build_loader(data, 2, train=True, world=2, rank=r, seed=5) for r in range(2)]
    for loader in loaders:
        loader.sampler.set_epoch(3)
    got = [torch.cat([t for _, t in loader]).tolist() for loader in loaders]
    single = build_loader(data, 4, train=True, world=1, rank=0, seed=5)
    single.sampler.set_epoch(3)
    batches = [t.tolist() for _, t in single]
    # Global batch k of one process = the union of batch k of the two processes.
    for k, batch in enumerate(batches):
        assert sorted(batch) == sorted(got[0][2 * k:2 * k + 2] + got[1][2 * k:2 * k + 2])


def test_digits_are_scikit_learns_images_split_and_scaled():
    datasets = pytest.importorskip("sklearn.datasets")
    from envconv.recipes.data import Digits

    digits = datasets.load_digits()
    train, test = Digits("train", image_size=8), Digits("test", image_size=8)
    assert (len(train), len(test)) == (1200, 597)
    # at the native 8x8 size the images are the originals / 16, in a fixed permutation with their labels
    images = torch.cat([train.images, test.images]).squeeze(1)
    labels = torch.cat([train.targets, test.targets])
    reference = torch.as_tensor(digits.images, dtype=torch.float32) / 16
    order = torch.randperm(len(reference), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, reference[order])
    assert labels.tolist() == torch.as_tensor(digits.target)[order].tolist()
    big = Digits("test", image_size=28, channels=3)
    assert big.images.shape == (597, 3, 28, 28) and float(big.images.min()) >= 0 and float(big.images.max()) <= 1
    # bilinear upsampling keeps the mean grey level of each image (to the border's effect)
    assert torch.allclose(big.images[:, 0].mean((1, 2)), test.images.squeeze(1).mean((1, 2)), atol=0.03)


def test_a_file_for_a_folder_and_a_too_large_subset_are_reported(tmp_path, fashion_root):
    from envconv.recipes.data import build_dataset

    file = tmp_path / "file"
    file.write_text("x")
    cfg = {**DEFAULTS["data"], "root": str(file)}
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        build_dataset(cfg, "train", 1, 10)
    cfg = {**DEFAULTS["data"], "root": str(fashion_root), "train_subset": 1000}
    with pytest.warns(UserWarning, match="subset of 1000 images was asked for, but the data set holds only 128"):
        assert len(build_dataset(cfg, "train", 1, 10)) == 128


def test_fashion_mnist_files_of_another_image_size_are_refused_naming_the_file(tmp_path):
    from run_helpers import write_idx

    for split, n in (("train", 4), ("t10k", 4)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", torch.zeros(n, 32, 32, dtype=torch.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", torch.zeros(n, dtype=torch.uint8))
    cfg = validate_config({"data": {"dataset": "fashion_mnist", "root": str(tmp_path)}})["data"]
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz holds 32x32 images; Fashion-MNIST's are 28x28"):
        build_dataset(cfg, "train", 1, 10)


def _image_folders(root, train_classes, val_classes):
    from PIL import Image

    for split, classes in (("train", train_classes), ("val", val_classes)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(root / split / name / "0.png")
    return validate_config({"data": {"dataset": "imagefolder", "train": str(root / "train"), "val": str(root / "val"),
                                     "image_size": 8, "augment": "none", "mean": [0, 0, 0],
                                     "std": [1, 1, 1]}})["data"]


def test_splits_with_different_classes_name_them(tmp_path):
    pytest.importorskip("torchvision")
    cfg = _image_folders(tmp_path, ["a", "b"], ["a", "c"])
    with pytest.raises(ValueError, match=r"only in training: \['b'\]; only in validation: \['c'\]"):
        build_datasets(cfg, 3, 3)


def test_a_corrupt_image_is_named(tmp_path):
    pytest.importorskip("torchvision")
    cfg = _image_folders(tmp_path, ["a"], ["a"])
    bad = tmp_path / "train" / "a" / "1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)  # a JPEG header, then nothing
    train = build_dataset(cfg, "train", 3, 1)
    with pytest.raises(ValueError, match=f"cannot read the image {bad}"):
        [train[i] for i in range(len(train))]
    with pytest.raises(ValueError, match="model.in_chans must be 1 or 3, got 2"):
        build_dataset({**cfg, "mean": [0, 0], "std": [1, 1]}, "train", 2, 1)


def test_scaled_objects_resize_and_place_each_image_where_its_seed_says(fashion_root):
    from envconv.recipes.data import FashionMNIST, ScaledObjects

    plain = FashionMNIST(fashion_root, "test")
    for scale, canvas in ((0.5, 56), (1.0, 40), (2.0, 56)):
        placed = ScaledObjects(plain, scale, canvas, seed=1)
        for index in (0, 7):
            image, label = placed[index]
            original, want_label = plain[index]
            side = round(28 * scale)
            assert image.shape == (1, canvas, canvas) and label == want_label
            # the object is where the (seed, index) generator puts it, and nothing else is on the canvas
            g = torch.Generator().manual_seed(1 * 1_000_003 + index)
            top, left = (int(torch.randint(0, canvas - side + 1, (), generator=g)) for _ in range(2))
            box = image[:, top:top + side, left:left + side]
            outside = image.clone()
            outside[:, top:top + side, left:left + side] = 0
            assert not outside.any()
            if scale == 1.0:  # no resize: the pixels themselves
                assert torch.equal(box, original)
            else:  # the antialiased bicubic resize, clipped to [0, 1]; it keeps the image's mass per area
                resized = torch.nn.functional.interpolate(original[None], size=(side, side), mode="bicubic",
                                                          antialias=True)[0].clamp(0, 1)
                assert torch.equal(box, resized)
                assert float(box.sum()) == pytest.approx(float(original.sum()) * scale ** 2, rel=0.03)
            assert placed[index][0].equal(image)  # the same place every time
    with pytest.raises(ValueError, match="larger than the 40x40 canvas"):
        ScaledObjects(plain, 1.5, 40)[0]


def test_a_fashion_mnist_config_with_a_canvas_builds_scaled_objects(fashion_root):
    from envconv.recipes.data import ScaledObjects

    cfg = validate_config({"data": {"dataset": "fashion_mnist", "root": str(fashion_root), "image_size": 56,
                                    "object_scale": 0.5, "augment": "none"}})["data"]
    train, val = build_dataset(cfg, "train", 1, 10), build_dataset(cfg, "val", 1, 10)
    assert isinstance(train, ScaledObjects) and (train.seed, val.seed) == (0, 1)
    assert train[0][0].shape == (1, 56, 56)
