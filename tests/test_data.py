"""Dataset loaders read local files into one in-memory form, or fail naming what is wrong.

MNIST-style data is written by the tests themselves in torchvision's raw layout (a handful of
28x28 images), so the real torchvision readers run with no download and no fixture files.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unsir.data import ClassificationData, load_dataset, load_image_folder, load_torchvision
from unsir.errors import UnlearningInputError

MNIST_CLASSES = (
    "0 - zero",
    "1 - one",
    "2 - two",
    "3 - three",
    "4 - four",
    "5 - five",
    "6 - six",
    "7 - seven",
    "8 - eight",
    "9 - nine",
)
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: two zero bytes, type 0x08 (unsigned byte), the rank, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _mnist_split(count: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Images that tell each other apart: a per-image background level and one bright pixel."""
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    for i in range(count):
        images[i] = 10 * (offset + i)
        images[i, offset + i, 27 - i] = 255
    labels = np.array([(7 * (offset + i)) % 10 for i in range(count)], dtype=np.uint8)
    return images, labels


def _write_mnist_root(root: Path, folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """torchvision's expected files, uncompressed; it checks no md5 on the raw idx files."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    splits = {"train": _mnist_split(3, 0), "t10k": _mnist_split(2, 3)}
    for prefix, (images, labels) in splits.items():
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return splits


def _write_png(path: Path, mode: str, size: tuple[int, int], color: tuple[int, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three classes of 5x5 PNGs, one of them RGBA with half-transparent pixels."""
    root = tmp_path / "pets"
    _write_png(root / "cat" / "a.png", "RGB", (5, 5), (255, 0, 0))
    _write_png(root / "cat" / "b.png", "RGBA", (5, 5), (0, 255, 0, 128))
    _write_png(root / "dog" / "c.png", "RGB", (5, 5), (0, 0, 255))
    _write_png(root / "emu" / "d.png", "RGB", (5, 5), (51, 102, 153))
    return root


def test_digits_are_real_images_in_unit_range_with_unique_ids(digits):
    assert digits.name == "digits"
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.dtype == torch.float32
    assert float(digits.images.min()) == 0.0 and float(digits.images.max()) == 1.0
    assert digits.labels.dtype == torch.int64 and set(digits.labels.tolist()) == set(range(10))
    assert digits.class_names == tuple(str(i) for i in range(10))
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(set(digits.sample_ids)) == len(digits) == 1797
    assert load_dataset("DIGITS").sample_ids == digits.sample_ids  # names are case-insensitive


@pytest.mark.parametrize(
    ("name", "folder", "class_names"),
    [
        ("mnist", "MNIST", MNIST_CLASSES),
        ("fashionmnist", "FashionMNIST", FASHION_CLASSES),
    ],
)
def test_mnist_style_data_is_read_from_a_local_root(tmp_path, name, folder, class_names):
    splits = _write_mnist_root(tmp_path, folder)
    data = load_dataset(name, tmp_path)

    # The official train and test splits are concatenated, train first.
    expected_images = np.concatenate([splits["train"][0], splits["t10k"][0]])
    expected_labels = np.concatenate([splits["train"][1], splits["t10k"][1]])
    assert data.name == name
    assert data.images.shape == (5, 1, 28, 28)
    assert torch.equal(data.images, torch.from_numpy(expected_images).float().unsqueeze(1) / 255.0)
    assert data.labels.tolist() == expected_labels.tolist()
    assert data.class_names == class_names
    assert data.sample_ids == (
        f"{name}-train-000000",
        f"{name}-train-000001",
        f"{name}-train-000002",
        f"{name}-test-000000",
        f"{name}-test-000001",
    )


def test_image_size_resizes_every_data_set_not_only_image_folders(tmp_path):
    _write_mnist_root(tmp_path, "MNIST")
    mnist = load_dataset("mnist", tmp_path, image_size=14)
    assert mnist.images.shape == (5, 1, 14, 14)
    digits = load_dataset("digits", image_size=16)
    assert digits.images.shape == (1797, 1, 16, 16)
    assert float(digits.images.min()) >= 0 and float(digits.images.max()) <= 1
    assert load_dataset("digits", image_size=8).images.shape == (1797, 1, 8, 8)  # its own size: as is


def test_one_torchvision_split_can_be_read_alone(tmp_path):
    splits = _write_mnist_root(tmp_path, "MNIST")
    test = load_torchvision("MNIST", tmp_path, train=False)
    assert len(test) == 2 and test.labels.tolist() == splits["t10k"][1].tolist()
    assert test.sample_ids == ("mnist-test-000000", "mnist-test-000001")


def test_mnist_file_with_a_bad_header_names_the_root(tmp_path):
    _write_mnist_root(tmp_path, "MNIST")
    labels = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(b"xxxx" + labels.read_bytes()[4:])  # not the IDX magic number
    with pytest.raises(UnlearningInputError, match=rf"cannot read 'mnist' from '{re.escape(str(tmp_path))}': .*format"):
        load_dataset("mnist", tmp_path)


def test_image_folder_reads_rgb_and_rgba_with_path_ids(image_folder):
    data = load_image_folder(image_folder)
    assert data.name == "pets"
    assert data.class_names == ("cat", "dog", "emu")
    assert data.sample_ids == ("cat/a.png", "cat/b.png", "dog/c.png", "emu/d.png")
    assert data.labels.tolist() == [0, 0, 1, 2]
    assert data.images.shape == (4, 3, 5, 5)
    # The RGBA image keeps its colour and loses its alpha channel (not blended with it).
    assert data.images[0, :, 2, 2].tolist() == [1.0, 0.0, 0.0]
    assert data.images[1, :, 2, 2].tolist() == [0.0, 1.0, 0.0]
    assert torch.allclose(data.images[3, :, 0, 0], torch.tensor([0.2, 0.4, 0.6]))
    assert load_dataset("imagefolder", image_folder).sample_ids == data.sample_ids


def test_image_folder_ids_survive_a_new_class(image_folder):
    before = load_image_folder(image_folder)
    _write_png(image_folder / "ant" / "z.png", "RGB", (5, 5), (9, 9, 9))
    after = load_image_folder(image_folder)
    # A class sorted first shifts every label and index, but a file keeps its id and pixels.
    assert after.class_names[0] == "ant" and after.labels.tolist() == [0, 1, 1, 2, 3]
    pixels_after = dict(zip(after.sample_ids, after.images, strict=True))
    for sample_id, pixels in zip(before.sample_ids, before.images, strict=True):
        assert torch.equal(pixels_after[sample_id], pixels)


def test_image_folder_needs_image_size_for_mixed_sizes(image_folder):
    """The error names a file of each size: among thousands of images, '[(3, 3, 9), (3, 5, 5)]'
    left the user to find the odd one."""
    _write_png(image_folder / "dog" / "wide.png", "RGB", (9, 3), (0, 0, 0))
    expected = r"mixes image sizes: 4 of 5x5 \(e\.g\. 'cat/a\.png'\), 1 of 9x3 \(e\.g\. 'dog/wide\.png'\).*image_size"
    with pytest.raises(UnlearningInputError, match=expected):
        load_image_folder(image_folder)
    resized = load_dataset("imagefolder", image_folder, image_size=4)
    assert resized.images.shape == (5, 3, 4, 4)
    assert resized.sample_ids[-2:] == ("dog/wide.png", "emu/d.png")


@pytest.mark.parametrize(
    "content",
    [b"not an image", b"", pytest.param(None, id="truncated")],
)
def test_image_folder_with_an_unreadable_image_names_the_file(image_folder, content):
    bad = image_folder / "dog" / "bad.png"
    if content is None:
        _write_png(image_folder / "dog" / "whole.png", "RGB", (64, 64), (1, 2, 3))
        whole = (image_folder / "dog" / "whole.png").read_bytes()
        (image_folder / "dog" / "whole.png").unlink()
        content = whole[: len(whole) // 2]
    bad.write_bytes(content)
    with pytest.raises(UnlearningInputError, match=r"cannot read image .*dog/bad\.png.*expected an image file"):
        load_image_folder(image_folder)


def test_image_folder_skips_hidden_files_and_folders(image_folder):
    expected = load_image_folder(image_folder)
    (image_folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (image_folder / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (image_folder / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    _write_png(image_folder / "dog" / ".ipynb_checkpoints" / "c-checkpoint.png", "RGB", (5, 5), (0, 0, 255))
    _write_png(image_folder / ".ipynb_checkpoints" / "x.png", "RGB", (5, 5), (9, 9, 9))
    data = load_image_folder(image_folder)
    assert data.class_names == expected.class_names == ("cat", "dog", "emu")
    assert data.sample_ids == expected.sample_ids
    assert torch.equal(data.images, expected.images)


def test_image_folder_with_an_empty_class_names_it_and_the_extensions(image_folder):
    (image_folder / "fox").mkdir()
    (image_folder / "fox" / ".DS_Store").write_bytes(b"x")
    (image_folder / "fox" / "notes.txt").write_text("x")
    with pytest.raises(
        UnlearningInputError, match=r"no valid file for the classes fox.*\.png.*hidden files are skipped"
    ):
        load_image_folder(image_folder)


def test_image_folder_refuses_a_link_back_up_the_tree(image_folder):
    """`cat/up -> ..` repeated the data set at every level until the path was too long: 4
    images became a hundred-odd samples, the same image in train and test."""
    (image_folder / "cat" / "up").symlink_to("..")
    with pytest.raises(UnlearningInputError, match=r"'cat/up' and '\.' are the same directory.*remove the link"):
        load_image_folder(image_folder)


def test_image_folder_refuses_an_image_linked_twice(image_folder):
    # The same file under a second class: a forgotten class's sample would hide in another's folder.
    (image_folder / "dog" / "also-a.png").symlink_to("../cat/a.png")
    with pytest.raises(UnlearningInputError, match=r"'dog/also-a\.png' and 'cat/a\.png' are the same file"):
        load_image_folder(image_folder)


def test_image_folder_refuses_the_same_pixels_under_two_classes(image_folder):
    """A copy of a forget-class image under a retained class (another file, not a link) passed:
    the prepared digest hashes pixels with the label, and forgetting the class kept learning it
    from the copy."""
    # Opaque RGBA: other bytes than cat/a.png's, the same pixels once read as RGB.
    _write_png(image_folder / "emu" / "copy.png", "RGBA", (5, 5), (255, 0, 0, 255))
    assert (image_folder / "emu" / "copy.png").read_bytes() != (image_folder / "cat" / "a.png").read_bytes()
    with pytest.raises(
        UnlearningInputError,
        match=r"same image under two classes: 'cat/a\.png' \(class 'cat'\) and 'emu/copy\.png' \(class 'emu'\)"
        r".*Expected each image in one class only",
    ):
        load_image_folder(image_folder)


def test_image_folder_keeps_the_first_copy_of_an_image_repeated_in_its_class(image_folder):
    """Two copies in one class were two samples, one of which could be trained on and the other
    tested: test accuracy, and the forget class's, measured memorisation."""
    expected = load_dataset("imagefolder", image_folder, image_size=5)
    (image_folder / "cat" / "sub").mkdir()
    with Image.open(image_folder / "cat" / "a.png") as image:
        image.convert("P").save(image_folder / "cat" / "sub" / "a.png")  # a palette copy
    _write_png(image_folder / "cat" / "z.png", "RGB", (10, 10), (255, 0, 0))  # the same once resized
    data = load_dataset("imagefolder", image_folder, image_size=5)
    assert data.sample_ids == expected.sample_ids == ("cat/a.png", "cat/b.png", "dog/c.png", "emu/d.png")
    assert torch.equal(data.images, expected.images) and torch.equal(data.labels, expected.labels)
    # The first in the data set's order (folder, then file name) is kept.
    assert data.dropped_duplicates == (("cat/z.png", "cat/a.png"), ("cat/sub/a.png", "cat/a.png"))
    assert expected.dropped_duplicates == ()


def test_image_folder_follows_a_class_folder_linked_from_outside(image_folder, tmp_path):
    # Linking class folders in from elsewhere is a way to assemble a data set: nothing is repeated.
    _write_png(tmp_path / "elsewhere" / "fox" / "e.png", "RGB", (5, 5), (1, 2, 3))
    (image_folder / "fox").symlink_to(tmp_path / "elsewhere" / "fox")
    data = load_image_folder(image_folder)
    assert data.class_names == ("cat", "dog", "emu", "fox")
    assert data.sample_ids == ("cat/a.png", "cat/b.png", "dog/c.png", "emu/d.png", "fox/e.png")


@pytest.mark.parametrize(
    ("array", "mode"),
    [(np.full((5, 5), 40000, dtype=np.uint16), "I;16"), (np.full((5, 5), 0.5, dtype=np.float32), "F")],
)
def test_image_folder_refuses_images_of_more_than_8_bits(image_folder, array, mode):
    # Converted to RGB, both would be clipped: 16-bit 40000 to 255 (white), float 0.5 to 0 (black).
    path = image_folder / "dog" / ("deep.png" if mode.startswith("I") else "deep.tiff")
    Image.fromarray(array).save(path)
    with pytest.raises(UnlearningInputError, match=rf"deep\.(png|tiff).*PIL mode '{re.escape(mode)}'.*8-bit"):
        load_image_folder(image_folder)


def test_image_folder_with_an_image_too_large_for_pil_names_it(image_folder, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 5x5 = 25 pixels: over twice the limit
    with pytest.raises(UnlearningInputError, match=r"cannot read image .*cat/a\.png.*MAX_IMAGE_PIXELS"):
        load_image_folder(image_folder)


def test_unknown_dataset_name_is_named():
    with pytest.raises(UnlearningInputError, match=r"unknown dataset 'imagenet'.*'digits'"):
        load_dataset("imagenet")
    with pytest.raises(UnlearningInputError, match=r"unknown torchvision dataset 'kmnist'"):
        load_torchvision("kmnist", ".")


def test_missing_root_without_download_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UnlearningInputError, match=re.escape(str(missing)) + ".*download is off"):
        load_dataset("mnist", missing)
    with pytest.raises(UnlearningInputError, match="needs a root directory"):
        load_dataset("cifar10")
    with pytest.raises(UnlearningInputError, match=re.escape(str(missing)) + ".*not a directory"):
        load_dataset("imagefolder", missing)


def test_cifar10_root_without_files_fails_naming_the_root(tmp_path):
    root = tmp_path / "empty-cifar"
    root.mkdir()
    with pytest.raises(UnlearningInputError, match=r"cannot read 'cifar10' from .*" + re.escape(str(root))) as info:
        load_dataset("cifar10", root)
    # Where the files belong, not torchvision's advice to download (nothing is downloaded).
    assert "under the root: cifar-10-batches-py/" in str(info.value) and "download=True" not in str(info.value)


def test_a_torchvision_root_lacking_one_file_names_it(tmp_path):
    _write_mnist_root(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UnlearningInputError, match=r"missing MNIST/raw/t10k-labels-idx1-ubyte;"):
        load_dataset("mnist", tmp_path)


def test_mnist_files_left_compressed_are_named_with_the_way_out(tmp_path):
    _write_mnist_root(tmp_path, "MNIST")
    raw = tmp_path / "MNIST" / "raw"
    for path in raw.iterdir():
        path.rename(path.with_name(path.name + ".gz"))  # as downloaded: torchvision reads them only unpacked
    with pytest.raises(UnlearningInputError, match=r"missing MNIST/raw/train-images-idx3-ubyte, .*gunzip"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("inside", ["MNIST", "MNIST/raw"])
def test_a_root_inside_the_data_sets_folder_names_the_root_to_set(tmp_path, inside):
    _write_mnist_root(tmp_path, "MNIST")
    expected = rf"the root is the folder that holds MNIST/: {re.escape(str(tmp_path))};"
    with pytest.raises(UnlearningInputError, match=expected):
        load_dataset("mnist", tmp_path / inside)


def test_cifar10_files_other_than_the_official_ones_are_named(tmp_path):
    """torchvision reads CIFAR only when each file's md5 is the official one: a re-pickled or
    cut-down batch was refused as 'Dataset not found or corrupted', naming no file."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (folder / name).write_bytes(b"a batch of my own")
    with pytest.raises(UnlearningInputError, match=r"missing cifar-10-batches-py/batches\.meta;") as info:
        load_dataset("cifar10", tmp_path)
    (folder / "batches.meta").write_bytes(b"my own labels")
    with pytest.raises(UnlearningInputError, match=r"batches-py/data_batch_1, .* differ from torchvision") as info:
        load_dataset("cifar10", tmp_path)
    assert "md5" in str(info.value) and "image folder" in str(info.value)


def test_image_folder_without_class_folders_is_an_input_error(tmp_path):
    with pytest.raises(UnlearningInputError, match=re.escape(str(tmp_path))):
        load_image_folder(tmp_path)


def _data(labels: list[int], ids: tuple[str, ...] = ("a", "b", "c")) -> ClassificationData:
    """Three blank images, two classes, and whatever labels and ids the test passes."""
    return ClassificationData("tiny", torch.zeros(3, 1, 2, 2), torch.tensor(labels, dtype=torch.int64), ("0", "1"), ids)


def test_classification_data_rejects_inconsistent_inputs():
    assert len(_data([0, 1, 1])) == 3  # the consistent case is accepted
    with pytest.raises(UnlearningInputError, match=r"3 images but \(2,\) labels"):
        _data([0, 1])
    with pytest.raises(UnlearningInputError, match="2 sample ids"):
        _data([0, 1, 1], ids=("a", "b"))
    with pytest.raises(UnlearningInputError, match=r"labels must lie in \[0, 1\], got \[0, 5\]"):
        _data([0, 5, 1])
    with pytest.raises(UnlearningInputError, match=r"got \[-1, 1\]"):
        _data([-1, 0, 1])
    with pytest.raises(UnlearningInputError, match=r"shape \(N, C, H, W\), got \(3, 2, 2\)"):
        ClassificationData("flat", torch.zeros(3, 2, 2), torch.zeros(3, dtype=torch.int64), ("0",), ("a", "b", "c"))


def test_classification_data_refuses_integer_pixels_and_repeated_ids_or_names():
    """Own tensors: uint8 pixels used to fail later in prepare_splits with torch's 'mean(): could
    not infer output dtype', and repeated sample ids were accepted, so every split read the last
    image with that id in place of the others."""
    labels = torch.tensor([0, 1, 1])
    with pytest.raises(UnlearningInputError, match=r"images are torch.uint8; .* images.float\(\) / 255"):
        ClassificationData("d", torch.zeros(3, 1, 2, 2, dtype=torch.uint8), labels, ("0", "1"), ("a", "b", "c"))
    with pytest.raises(UnlearningInputError, match="sample id 'b' is given more than once"):
        _data([0, 1, 1], ids=("a", "b", "b"))
    with pytest.raises(UnlearningInputError, match="class name 'cat' is given more than once"):
        ClassificationData("d", torch.zeros(3, 1, 2, 2), labels, ("cat", "cat"), ("a", "b", "c"))


@pytest.mark.parametrize(
    ("channels_last", "channels_first"), [((3, 32, 32, 3), (3, 3, 32, 32)), ((3, 8, 8, 1), (3, 1, 8, 8))]
)
def test_classification_data_refuses_channels_last_images(channels_last, channels_first):
    """Images given as numpy and PIL keep them, (N, H, W, C), were read as (N, C, H, W): a model
    with 32 input channels trained on 32x3 'images' without an error."""
    labels = torch.tensor([0, 1, 1])
    expected = re.escape(f"look channels-last (N, H, W, C); expected (N, C, H, W) = {channels_first}")
    with pytest.raises(UnlearningInputError, match=expected):
        ClassificationData("d", torch.zeros(channels_last), labels, ("0", "1"), ("a", "b", "c"))
    ClassificationData("d", torch.zeros(channels_first), labels, ("0", "1"), ("a", "b", "c"))  # accepted
    # Features laid out as channels of a 1x1 image are not images kept channels-last.
    ClassificationData("d", torch.zeros(3, 8, 1, 1), labels, ("0", "1"), ("a", "b", "c"))


def test_sample_digests_follow_pixels_and_labels():
    images = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1])
    base = ClassificationData("d", images, labels, ("0", "1"), ("a", "b", "c")).sample_digests()
    assert len(set(base)) == 3 and all(re.fullmatch(r"[0-9a-f]{64}", d) for d in base)

    nudged = images.clone()
    nudged[1, 0, 2, 3] += 1e-3
    changed = ClassificationData("d", nudged, labels, ("0", "1"), ("a", "b", "c")).sample_digests()
    assert changed[1] != base[1] and changed[0] == base[0] and changed[2] == base[2]

    relabelled = ClassificationData("d", images, torch.tensor([0, 1, 0]), ("0", "1"), ("a", "b", "c"))
    assert relabelled.sample_digests()[:2] == base[:2] and relabelled.sample_digests()[2] != base[2]
