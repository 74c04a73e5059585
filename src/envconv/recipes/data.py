"""Datasets and loaders for training, evaluation and probing; nothing is downloaded.

* ``fashion_mnist``: the IDX ``.gz`` files of Fashion-MNIST in a local folder (Debian's
  ``dataset-fashion-mnist`` puts them in :data:`FASHION_MNIST_ROOT`); with ``object_scale`` or
  an ``image_size`` other than 28, each garment resized and placed on a larger canvas
  (:class:`ScaledObjects`: objects at several scales).
* ``imagefolder``: any folder with one sub-folder of images per class (ImageNet layout,
  the transfer datasets), read by ``torchvision.datasets.ImageFolder``.
* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes),
  scaled up bilinearly to ``image_size``: the small transfer task of the study's probe.
* ``synthetic``: seeded random images whose class is a smooth fixed pattern in noise, for smoke
  runs and tests.

Randomness: the training order comes from :class:`~torch.utils.data.DistributedSampler`
(seeded by the run's seed and the epoch), and augmentation from the torch generator that
the trainer seeds at the start of every epoch, so an epoch is a function of
(seed, epoch, rank) alone. That is what makes resuming exact.
"""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

__all__ = ["FASHION_MNIST_ROOT", "FASHION_MNIST_CLASSES", "read_idx", "FashionMNIST", "ScaledObjects",
           "SyntheticImages", "Digits", "CropFlip", "Normalize", "build_dataset", "build_datasets", "build_loader",
           "build_recalibration_loader", "ShardSampler", "epoch_seed", "load_image"]

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_INSTALL_HINT = ("install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; in a clone of envconv "
                 "`make data` does it), "
                 "or set data.root to a folder holding the four IDX files (plain or .gz)")


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one process (distinct for every (epoch, rank) pair of a run)."""
    return (int(seed) * 1_000_003 + int(epoch) * 65_537 + int(rank)) % (2 ** 63)


def read_idx(path: os.PathLike) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (plain or gzip) into a ``uint8`` tensor.

    The format: two zero bytes, a type byte (0x08 = unsigned byte), the number of
    dimensions, then each dimension as a big-endian int32, then the data.

    Raises:
        ValueError: a wrong magic number, type, or a size that does not match the header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {raw[:4].hex()})")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset, count = 4 + 4 * ndim, 1
    for d in shape:
        count *= d
    if len(raw) - offset != count:
        raise ValueError(f"{path}: header says {shape} ({count} bytes) but the file holds {len(raw) - offset}")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(shape)


def _find_file(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"Fashion-MNIST file {stem}.gz not found in {root}; {_INSTALL_HINT}")


class FashionMNIST(Dataset):
    """Fashion-MNIST from its IDX files: 28x28 grey images in 10 classes.

    Items are ``(image, label)`` with ``image`` a float tensor ``(1, 28, 28)`` in [0, 1]
    passed through ``transform``.

    Args:
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
            (default :data:`FASHION_MNIST_ROOT`).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        transform: a callable on the image tensor.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(self, root: Optional[os.PathLike] = None, split: str = "train", transform=None) -> None:
        if split not in _FASHION_FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        root = Path(root or FASHION_MNIST_ROOT)
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(f"Fashion-MNIST folder {root} is a file, not a folder; give the folder that "
                                     f"holds the IDX .gz files")
        if not root.is_dir():
            raise FileNotFoundError(f"Fashion-MNIST folder {root} does not exist; {_INSTALL_HINT}")
        images_file, labels_file = (_find_file(root, stem) for stem in _FASHION_FILES[split])
        self.images, self.targets = read_idx(images_file), read_idx(labels_file).long()
        if self.images.dim() != 3 or self.targets.dim() != 1 or len(self.images) != len(self.targets):
            raise ValueError(f"{images_file} / {labels_file}: expected (N, H, W) images and N labels, got "
                             f"{tuple(self.images.shape)} and {tuple(self.targets.shape)}")
        height, width = self.images.shape[1:]
        if (height, width) != (28, 28):
            raise ValueError(f"{images_file} holds {height}x{width} images; Fashion-MNIST's are 28x28, the size "
                             f"data.image_size must be for this dataset")
        if len(self.targets) and int(self.targets.max()) >= len(self.classes):
            raise ValueError(f"{labels_file}: labels must be < {len(self.classes)}, found {int(self.targets.max())}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self.images[index].unsqueeze(0).float().div_(255)
        return (self.transform(image) if self.transform else image), int(self.targets[index])


class ScaledObjects(Dataset):
    """The images of ``dataset`` resized by ``scale`` and placed on a ``canvas`` x ``canvas`` black canvas.

    A recipe in the spirit of the scale-generalisation sets (Jansson & Lindeberg's MNIST Large
    Scale): each image is resized by ``scale`` with bicubic interpolation (antialiased, i.e.
    smoothed before a downsampling), clipped to [0, 1], and pasted at a position drawn uniformly
    from every position where it fits, by a generator seeded with ``(seed, index)``: the same
    image always lands at the same place, whichever subset or order reads it. An image that fills
    the canvas is pasted at the corner.

    Args:
        dataset: items ``(image (C, h, w) in [0, 1], label)``, without normalisation.
        scale: the resize factor; ``round(h * scale)`` must fit in ``canvas``.
        canvas: the output's height and width.
        seed: the placement seed (the study uses 0 for training images and 1 for test images).
        transform: a callable on the placed image.

    Example:
        >>> images = [(torch.ones(1, 28, 28), 3)]
        >>> placed = ScaledObjects(images, scale=0.5, canvas=56)
        >>> image, label = placed[0]
        >>> image.shape, label, round(float(image.sum()))  # a 14 x 14 white square on the canvas
        (torch.Size([1, 56, 56]), 3, 196)
    """

    def __init__(self, dataset, scale: float, canvas: int, seed: int = 0, transform=None) -> None:
        self.dataset, self.scale, self.canvas, self.seed = dataset, float(scale), int(canvas), seed
        self.transform = transform
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        size = [max(1, round(n * self.scale)) for n in image.shape[-2:]]
        if max(size) > self.canvas:
            raise ValueError(f"an object of {image.shape[-2]}x{image.shape[-1]} at scale {self.scale} is "
                             f"{size[0]}x{size[1]}, larger than the {self.canvas}x{self.canvas} canvas; raise "
                             f"data.image_size or lower data.object_scale")
        if size != list(image.shape[-2:]):
            image = torch.nn.functional.interpolate(image[None], size=size, mode="bicubic", align_corners=False,
                                                    antialias=True)[0].clamp_(0, 1)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        top, left = (int(torch.randint(0, self.canvas - n + 1, (), generator=generator)) for n in size)
        placed = image.new_zeros(image.shape[0], self.canvas, self.canvas)
        placed[:, top:top + size[0], left:left + size[1]] = image
        return (self.transform(placed) if self.transform else placed), label


class SyntheticImages(Dataset):
    """Seeded random images: N(0, 1) noise plus a fixed smooth per-class pattern (amplitude ``signal``).

    A pattern is a random 4x4 image scaled up bilinearly, so that a small CNN learns the
    classes in a few epochs.
    """

    def __init__(self, size: int, num_classes: int, channels: int, image_size: int, seed: int = 0,
                 signal: float = 1.0, transform=None) -> None:
        g = torch.Generator().manual_seed(seed)
        coarse = torch.randn(num_classes, channels, 4, 4, generator=g)
        patterns = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear",
                                                   align_corners=False)
        self.targets = torch.randint(0, num_classes, (size,), generator=g)
        self.images = torch.randn(size, channels, image_size, image_size, generator=g) + signal * patterns[self.targets]
        self.classes = [str(c) for c in range(num_classes)]
        self.transform = transform

    def take(self, start: int, stop: int, transform=None) -> "SyntheticImages":
        """Images ``start:stop`` as a dataset of their own (same class patterns)."""
        part = SyntheticImages.__new__(SyntheticImages)
        part.images, part.targets = self.images[start:stop], self.targets[start:stop]
        part.classes, part.transform = self.classes, transform
        return part

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.targets[index])


class Digits(Dataset):
    """scikit-learn's 8x8 digits, scaled up to ``image_size`` (bilinear) and repeated over ``channels``.

    The 1,797 images (grey levels 0..16, mapped to [0, 1]) are split by a fixed seeded
    permutation: the first :attr:`TRAIN_IMAGES` are ``"train"``, the other 597 ``"test"``.
    Nothing is downloaded: the images ship with scikit-learn.

    Args:
        split: ``"train"`` or ``"test"``.
        image_size: output side (the model's input size, e.g. 28).
        channels: the model's input channels (the grey image is repeated).
        transform: a callable on the image tensor.
    """

    TRAIN_IMAGES = 1200
    classes = tuple(str(d) for d in range(10))

    def __init__(self, split: str = "train", image_size: int = 28, channels: int = 1, transform=None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ImportError("data.dataset=digits needs scikit-learn: pip install scikit-learn") from err
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).div_(16).unsqueeze(1)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        order = order[:self.TRAIN_IMAGES] if split == "train" else order[self.TRAIN_IMAGES:]
        images = torch.nn.functional.interpolate(images[order], size=(image_size, image_size), mode="bilinear",
                                                 align_corners=False).clamp_(0, 1)
        self.images = images.expand(-1, channels, -1, -1).contiguous()
        self.targets = torch.as_tensor(digits.target, dtype=torch.long)[order]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.targets[index])


class CropFlip:
    """Zero-pad by ``padding``, take a random ``size`` crop, flip left-right with probability 1/2.

    Works on ``(C, H, W)`` tensors with torch's global generator (seeded per epoch by the trainer).
    """

    def __init__(self, size: int, padding: int) -> None:
        self.size, self.padding = int(size), int(padding)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        p, s = self.padding, self.size
        if p:
            image = torch.nn.functional.pad(image, (p, p, p, p))
        h, w = image.shape[-2:]
        if h < s or w < s:
            raise ValueError(f"crop size {s} is larger than the padded image {h}x{w}")
        top, left = (int(torch.randint(0, n - s + 1, ())) for n in (h, w))
        image = image[..., top:top + s, left:left + s]
        return image.flip(-1) if torch.rand(()) < 0.5 else image

    def __repr__(self) -> str:
        return f"CropFlip(size={self.size}, padding={self.padding})"


class Normalize:
    """``(image - mean) / std`` per channel on a ``(C, H, W)`` tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] != self.mean.shape[0]:
            raise ValueError(f"image has {image.shape[0]} channels but data.mean/std have {self.mean.shape[0]}")
        return (image - self.mean) / self.std


class _Compose:
    def __init__(self, transforms: List[Any]) -> None:
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, image):
        for t in self.transforms:
            image = t(image)
        return image


def _tensor_transform(cfg: Dict[str, Any], train: bool):
    if cfg["augment"] == "imagenet":
        raise ValueError(f"data.augment=imagenet (RandomResizedCrop) needs data.dataset=imagefolder; "
                         f"use crop-flip or none for {cfg['dataset']}")
    augment = CropFlip(cfg["image_size"], cfg["crop_padding"]) if train and cfg["augment"] == "crop-flip" else None
    return _Compose([augment, Normalize(cfg["mean"], cfg["std"])])


def _imagefolder_transform(cfg: Dict[str, Any], train: bool, in_chans: int):
    try:
        from torchvision import transforms as T
    except ImportError as err:  # pragma: no cover - torchvision is a test dependency
        raise ImportError("data.dataset=imagefolder needs torchvision: pip install torchvision") from err
    size = cfg["image_size"]
    resize = cfg["eval_resize"] or size
    if train and cfg["augment"] == "imagenet":
        geometry = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(resize), T.CenterCrop(size)]
    grey = [T.Grayscale(num_output_channels=1)] if in_chans == 1 else []
    tail = [CropFlip(size, cfg["crop_padding"])] if train and cfg["augment"] == "crop-flip" else []
    return T.Compose([*grey, *geometry, T.ToTensor(), *tail, Normalize(cfg["mean"], cfg["std"])])


def _imagefolder(path: Optional[str], key: str, transform):
    if not path:
        raise ValueError(f"data.{key} must name a folder for data.dataset=imagefolder")
    if Path(path).exists() and not Path(path).is_dir():
        raise NotADirectoryError(f"data.{key}: {path} is a file, not an image folder")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"data.{key}: image folder {path} does not exist")
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(path, transform=transform, loader=load_image)
    except (FileNotFoundError, RuntimeError) as err:  # e.g. no class folders / no images
        raise FileNotFoundError(f"data.{key}: {path} is not an image folder with one sub-folder per class "
                                f"({err})") from err


def load_image(path: str):
    """Open an image file as RGB with PIL; a corrupt or unreadable file raises ``ValueError`` naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for truncated or foreign files
        raise ValueError(f"cannot read the image {path} ({type(err).__name__}: {err}); remove or replace it") from err


def _subset(dataset: Dataset, count: Optional[int], seed: int) -> Dataset:
    if count is not None and count > len(dataset):
        warnings.warn(f"a subset of {count} images was asked for, but the data set holds only {len(dataset)}: "
                      f"using all {len(dataset)}", UserWarning, stacklevel=3)
    if count is None or count >= len(dataset):
        return dataset
    if count < 1:
        raise ValueError(f"a data subset must hold at least 1 image, got {count}")
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    subset = Subset(dataset, indices.tolist())
    subset.classes = dataset.classes
    return subset


def build_dataset(data_cfg: Dict[str, Any], split: str, in_chans: int, num_classes: int) -> Dataset:
    """The ``"train"`` or ``"val"`` dataset a config's ``data`` section describes (subset applied).

    Raises:
        FileNotFoundError: a missing dataset folder or file (with how to get it).
        ValueError: the data do not fit the model (channels, number of classes).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    kind, train = data_cfg["dataset"], split == "train"
    if len(data_cfg["mean"]) != in_chans:
        raise ValueError(f"data.mean/std have {len(data_cfg['mean'])} entries but model.in_chans is {in_chans}")
    if kind == "fashion_mnist":
        if in_chans != 1:
            raise ValueError(f"Fashion-MNIST images have 1 channel; set model.in_chans=1 (got {in_chans})")
        transform = _tensor_transform(data_cfg, train)
        if data_cfg["image_size"] == 28 and data_cfg["object_scale"] == 1:
            dataset = FashionMNIST(data_cfg["root"], "train" if train else "test", transform)
        else:  # objects resized and placed on a canvas of image_size
            side = round(28 * data_cfg["object_scale"])
            if side > data_cfg["image_size"]:
                raise ValueError(f"Fashion-MNIST garments at data.object_scale={data_cfg['object_scale']} are "
                                 f"{side}x{side}, larger than the data.image_size={data_cfg['image_size']} canvas")
            dataset = ScaledObjects(FashionMNIST(data_cfg["root"], "train" if train else "test"),
                                    data_cfg["object_scale"], data_cfg["image_size"], seed=0 if train else 1,
                                    transform=transform)
    elif kind == "digits":
        dataset = Digits("train" if train else "test", data_cfg["image_size"], in_chans,
                         _tensor_transform(data_cfg, train))
    elif kind == "synthetic":
        n_train, n_val = data_cfg["synthetic_size"]
        images = SyntheticImages(n_train + n_val, num_classes, in_chans, data_cfg["image_size"], seed=0)
        start, stop = (0, n_train) if train else (n_train, n_train + n_val)
        dataset = images.take(start, stop, _tensor_transform(data_cfg, train))
    else:
        if in_chans not in (1, 3):
            raise ValueError(f"image folders give 1-channel (grey) or 3-channel (RGB) images; model.in_chans must be "
                             f"1 or 3, got {in_chans}")
        dataset = _imagefolder(data_cfg[split], split, _imagefolder_transform(data_cfg, train, in_chans))
    if len(dataset.classes) > num_classes:
        raise ValueError(f"the dataset has {len(dataset.classes)} classes but model.num_classes is {num_classes}")
    return _subset(dataset, data_cfg[f"{split}_subset"], 0 if train else 1)


def build_datasets(data_cfg: Dict[str, Any], in_chans: int, num_classes: int) -> Tuple[Dataset, Dataset]:
    """The training and validation datasets (:func:`build_dataset`), checked to have the same classes."""
    train, val = (build_dataset(data_cfg, split, in_chans, num_classes) for split in ("train", "val"))
    if list(train.classes) != list(val.classes):
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        detail = (f"only in training: {only_train or 'none'}; only in validation: {only_val or 'none'}"
                  if only_train or only_val else "the same names in another order")
        raise ValueError(f"the training and validation data have different classes ({detail})")
    return train, val


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: each process evaluates its share, nothing twice."""

    def __init__(self, length: int, world: int = 1, rank: int = 0) -> None:
        self.length, self.world, self.rank = length, world, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world))


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, world: int = 1, rank: int = 0, seed: int = 0,
                 workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A loader of ``batch_size`` images per process.

    Training: a :class:`DistributedSampler` (also for one process, so that the order
    depends only on the seed and the epoch: call ``loader.sampler.set_epoch(epoch)``).
    Evaluation: :class:`ShardSampler`, every image exactly once over all processes.
    """
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = ShardSampler(len(dataset), world, rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False, generator=torch.Generator(), drop_last=False)


def build_recalibration_loader(data_cfg: Dict[str, Any], in_chans: int, num_classes: int, batch_size: int, *,
                               world: int = 1, rank: int = 0, workers: Optional[int] = None,
                               pin_memory: bool = False) -> DataLoader:
    """This process's share of the training images without augmentation, in a fixed order.

    What BatchNorm statistics are recomputed from (``envconv eval --recalibrate-bn``,
    ``train.recalibrate_bn``). ``workers``: default ``data_cfg["workers"]``.

    Example:
        >>> cfg = {"dataset": "synthetic", "synthetic_size": [8, 4], "image_size": 8, "mean": [0.0], "std": [1.0],
        ...        "augment": "crop-flip", "crop_padding": 2, "train_subset": None, "workers": 0}
        >>> images, labels = next(iter(build_recalibration_loader(cfg, 1, 2, batch_size=4)))
        >>> images.shape
        torch.Size([4, 1, 8, 8])
    """
    train_set = build_dataset(dict(data_cfg, augment="none"), "train", in_chans, num_classes)
    return build_loader(train_set, batch_size, train=False, world=world, rank=rank,
                        workers=data_cfg["workers"] if workers is None else workers, pin_memory=pin_memory)
