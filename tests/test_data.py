"""Tests of ``pyro_dwp.data``: MNIST / notMNIST loading and the regression curve.

The real-data tests read the bundled files in ``../shared/data`` (beside the repository) and are
skipped if they are absent; the error-path tests write tiny synthetic IDX files into ``tmp_path``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data
from torchvision.datasets import MNIST
from torchvision.datasets.mnist import read_label_file

from pyro_dwp.data import (
    CACHE_ENV_VAR,
    DATA_ENV_VAR,
    curve,
    find_data_dir,
    load_mnist,
    load_notmnist,
    make_regression_data,
    noise_in_y,
    true_curve,
)

GZ_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# MD5 of the decompressed files, from ../shared/data/README.md.
DECOMPRESSED_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "notMNIST": {
        "train-images-idx3-ubyte": "90d885a9e0faec830adbd88390f33cb9",
        "train-labels-idx1-ubyte": "08ee0dc9e509147e879ddcd05e206655",
        "t10k-images-idx3-ubyte": "8e366e2bbdfcd7849627ae1680083c58",
        "t10k-labels-idx1-ubyte": "164ec2084754c4fdfeb114e5d56854c0",
    },
}
MAX_PIXEL = 255 / 126

needs_data = needs_shared_data(*(f"{d}/{f}" for d in ("mnist", "notmnist") for f in GZ_FILES))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the real-data tests, so that each file is decompressed once."""
    return tmp_path_factory.mktemp("cache")


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0x0800 + number of dimensions)."""
    header = struct.pack(f">I{array.ndim}I", 0x0800 + array.ndim, *array.shape)
    with gzip.open(path, "wb") as out:
        out.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    """A data directory of synthetic ``mnist/`` and ``notmnist/`` folders: 30 train, 20 test."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for name in ("mnist", "notmnist"):
        (root / name).mkdir(parents=True)
        for prefix, size in (("train", 30), ("t10k", 20)):
            images = rng.integers(0, 256, size=(size, 28, 28), dtype=np.uint8)
            _write_idx_gz(root / name / f"{prefix}-images-idx3-ubyte.gz", images)
            _write_idx_gz(root / name / f"{prefix}-labels-idx1-ubyte.gz", np.arange(size) % 10)
    return root


# --- real data ------------------------------------------------------------------------------


@needs_data
def test_mnist_splits_are_the_official_files_scaled(cache_dir: Path) -> None:
    train_x, train_y = load_mnist("train", SHARED_DATA, cache_dir=cache_dir)
    valid_x, valid_y = load_mnist("valid", SHARED_DATA, cache_dir=cache_dir)
    test_x, test_y = load_mnist("test", SHARED_DATA, cache_dir=cache_dir)
    assert train_x.shape == (50_000, 784) and train_y.shape == (50_000,)
    assert valid_x.shape == (10_000, 784) and valid_y.shape == (10_000,)
    assert test_x.shape == (10_000, 784) and test_y.shape == (10_000,)
    for x, y in ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() == 0 and x.max() == pytest.approx(MAX_PIXEL)
        assert set(y.tolist()) == set(range(10))
    # train + valid are the official 60k training examples in order; pixels are bytes / 126.
    official_y = read_label_file(str(cache_dir / "MNIST" / "raw" / "train-labels-idx1-ubyte"))
    assert torch.equal(torch.cat([train_y, valid_y]), official_y)
    bytes_ = valid_x[:100] * 126
    assert torch.allclose(bytes_, bytes_.round(), atol=1e-4)


@needs_data
def test_decompressed_cache_is_byte_exact(cache_dir: Path) -> None:
    load_mnist("test", SHARED_DATA, cache_dir=cache_dir)
    load_notmnist("test", SHARED_DATA, cache_dir=cache_dir)
    for folder, digests in DECOMPRESSED_MD5.items():
        for file, md5 in digests.items():
            data = (cache_dir / folder / "raw" / file).read_bytes()
            assert hashlib.md5(data, usedforsecurity=False).hexdigest() == md5, file


@needs_data
def test_notmnist_splits(cache_dir: Path) -> None:
    train_x, train_y = load_notmnist("train", SHARED_DATA, cache_dir=cache_dir, flatten=False)
    test_x, test_y = load_notmnist("test", SHARED_DATA, cache_dir=cache_dir)
    assert train_x.shape == (18_724, 1, 28, 28) and train_y.shape == (18_724,)
    assert test_x.shape == (3_493, 784) and test_y.shape == (3_493,)
    for x, y in ((train_x, train_y), (test_x, test_y)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() == 0 and x.max() == pytest.approx(MAX_PIXEL)
        assert set(y.tolist()) == set(range(10))


@needs_data
def test_subset_is_class_balanced_and_seeded(cache_dir: Path) -> None:
    x, y = load_mnist("train", SHARED_DATA, n=100, seed=0, cache_dir=cache_dir)
    assert x.shape == (100, 784)
    assert torch.bincount(y, minlength=10).tolist() == [10] * 10
    x_again, y_again = load_mnist("train", SHARED_DATA, n=100, seed=0, cache_dir=cache_dir)
    assert torch.equal(x, x_again) and torch.equal(y, y_again)
    x_other, _ = load_mnist("train", SHARED_DATA, n=100, seed=1, cache_dir=cache_dir)
    assert not torch.equal(x, x_other)


@needs_data
def test_subset_is_drawn_from_the_split_in_order(cache_dir: Path) -> None:
    x, y = load_mnist("test", SHARED_DATA, n=30, seed=2, cache_dir=cache_dir)
    full_x, full_y = load_mnist("test", SHARED_DATA, cache_dir=cache_dir)
    weights = torch.rand(784, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    keys = full_x.double() @ weights  # a fingerprint of each image, to find the subset's rows
    positions = [int((keys - key).abs().argmin()) for key in x.double() @ weights]
    assert torch.equal(full_x[positions], x) and torch.equal(full_y[positions], y)
    assert positions == sorted(positions)


@needs_data
def test_subset_not_divisible_by_ten_is_plain_random(cache_dir: Path) -> None:
    x, y = load_notmnist("test", SHARED_DATA, n=55, seed=3, cache_dir=cache_dir, flatten=False)
    assert x.shape == (55, 1, 28, 28) and y.shape == (55,)
    x_again, _ = load_notmnist("test", SHARED_DATA, n=55, seed=3, cache_dir=cache_dir)
    assert torch.equal(x.flatten(1), x_again)


@needs_data
def test_env_var_points_to_the_data(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(SHARED_DATA))
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache_dir))
    x, y = load_notmnist("test")
    assert x.shape == (3_493, 784) and y.shape == (3_493,)
    assert find_data_dir("mnist") == SHARED_DATA / "mnist"


# --- synthetic data: resolution, caching and errors -----------------------------------------


def test_explicit_data_dir_beats_env_var(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "empty"))
    x, y = load_notmnist("train", tiny_data_dir)
    assert x.shape == (30, 784) and y.tolist() == [i % 10 for i in range(30)]
    assert (tmp_path / "cache" / "notMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty" / "notmnist"))):
        load_notmnist("train")


def test_returned_tensors_do_not_alias_the_cache(tiny_data_dir: Path, tmp_path: Path) -> None:
    x, y = load_notmnist("test", tiny_data_dir, cache_dir=tmp_path / "cache")
    x.zero_()
    y.fill_(7)
    x_again, y_again = load_notmnist("test", tiny_data_dir, cache_dir=tmp_path / "cache")
    assert x_again.max() > 0 and y_again.tolist() == [i % 10 for i in range(20)]


def test_changed_source_file_is_read_again(tiny_data_dir: Path, tmp_path: Path) -> None:
    _, y = load_notmnist("test", tiny_data_dir, cache_dir=tmp_path / "cache")
    labels = tiny_data_dir / "notmnist" / "t10k-labels-idx1-ubyte.gz"
    _write_idx_gz(labels, np.full(20, 9))
    stat = labels.stat()  # a new modification time, whatever the file system's resolution
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _, y_new = load_notmnist("test", tiny_data_dir, cache_dir=tmp_path / "cache")
    assert y.tolist() != y_new.tolist() and y_new.tolist() == [9] * 20


def test_missing_file_names_file_and_directory(tiny_data_dir: Path, tmp_path: Path) -> None:
    (tiny_data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist("test", tiny_data_dir, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "not found: t10k-labels-idx1-ubyte.gz." in message
    assert f"Looked in {tiny_data_dir / 'mnist'}" in message
    assert all(file in message for file in GZ_FILES) and DATA_ENV_VAR in message


def test_data_dir_pointing_at_the_subfolder_gets_a_hint(tiny_data_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="give its parent directory instead"):
        find_data_dir("mnist", tiny_data_dir / "mnist")


def test_notmnist_without_data_dir_explains_the_env_var() -> None:
    with pytest.raises(FileNotFoundError, match=f"{DATA_ENV_VAR} is not set"):
        load_notmnist("train")


def test_failed_mnist_download_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MNIST, "mirrors", [(tmp_path / "no-mirror").as_uri() + "/"])
    with pytest.raises(FileNotFoundError, match="downloading MNIST into .* failed") as info:
        load_mnist("test", cache_dir=tmp_path / "cache")
    assert all(file in str(info.value) for file in GZ_FILES)


def test_corrupt_gzip_names_the_file(tiny_data_dir: Path, tmp_path: Path) -> None:
    bad = tiny_data_dir / "notmnist" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(b"this is not gzip data" * 10)
    with pytest.raises(ValueError, match=re.escape(f"{bad} is corrupt")):
        load_notmnist("train", tiny_data_dir, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "notMNIST" / "raw").glob(".*.tmp"))


def test_truncated_gzip_names_the_file(tiny_data_dir: Path, tmp_path: Path) -> None:
    bad = tiny_data_dir / "mnist" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(ValueError, match=re.escape(f"{bad} is corrupt")):
        load_mnist("test", tiny_data_dir, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("file", "payload"),
    [
        ("t10k-labels-idx1-ubyte.gz", b"\x00\x00\x09\x09" + bytes(20)),  # wrong magic
        ("t10k-images-idx3-ubyte.gz", struct.pack(">4I", 2051, 20, 28, 28) + bytes(100)),  # short
    ],
)
def test_bad_idx_content_names_the_file(
    tiny_data_dir: Path, tmp_path: Path, file: str, payload: bytes
) -> None:
    bad = tiny_data_dir / "mnist" / file
    with gzip.open(bad, "wb") as out:
        out.write(payload)
    with pytest.raises(ValueError, match=re.escape(f"MNIST data file {bad} is corrupt")):
        load_mnist("test", tiny_data_dir, cache_dir=tmp_path / "cache")


def test_mismatched_image_and_label_counts(tiny_data_dir: Path, tmp_path: Path) -> None:
    _write_idx_gz(tiny_data_dir / "notmnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(19))
    with pytest.raises(ValueError, match="do not match"):
        load_notmnist("test", tiny_data_dir, cache_dir=tmp_path / "cache")


def test_argument_errors(tiny_data_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist("validation", tiny_data_dir, cache_dir=cache)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split must be one of"):
        load_notmnist("valid", tiny_data_dir, cache_dir=cache)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be between 1 and the split size 20"):
        load_notmnist("test", tiny_data_dir, n=21, cache_dir=cache)
    _write_idx_gz(tiny_data_dir / "notmnist" / "train-labels-idx1-ubyte.gz", np.arange(30) % 5)
    with pytest.raises(ValueError, match="cannot draw 1 examples of class 5"):
        load_notmnist("train", tiny_data_dir, n=10, cache_dir=cache)
    with pytest.raises(ValueError, match="too few to set the last 10000 apart"):
        load_mnist("valid", tiny_data_dir, cache_dir=cache)
    with pytest.raises(ValueError, match="name must be one of"):
        find_data_dir("cifar", tiny_data_dir)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"subset must be one of \('balanced', 'stratified'\)"):
        load_mnist("train+valid", tiny_data_dir, n=10, subset="sklearn", cache_dir=cache)  # type: ignore[arg-type]


def test_train_plus_valid_is_the_whole_training_file(tiny_data_dir: Path, tmp_path: Path) -> None:
    """``"train+valid"`` is every training image (no 10,000 held back), in file order; its
    stratified subset keeps the pool's class proportions."""
    x, y = load_mnist("train+valid", tiny_data_dir, cache_dir=tmp_path / "cache")
    assert x.shape == (30, 784) and y.tolist() == [i % 10 for i in range(30)]
    _, y_sub = load_mnist(
        "train+valid", tiny_data_dir, n=20, seed=1, subset="stratified", cache_dir=tmp_path / "c"
    )
    assert torch.bincount(y_sub, minlength=10).tolist() == [2] * 10


# --- regression curve -----------------------------------------------------------------------


def test_curve_by_hand() -> None:
    x = torch.tensor([0.0, 0.25, 0.125])
    expected = [0.0, 0.25 + 0.3, 0.125 + 0.3 * math.sin(math.pi / 4) + 0.3]
    assert true_curve(x).tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.equal(curve(x, None), true_curve(x))
    # The noise enters inside both sines and is added: y(0, e=0.25) = 0.3 + 0 + 0.25.
    assert curve(torch.tensor([0.0]), torch.tensor([0.25])).item() == pytest.approx(0.55)


def test_make_regression_data() -> None:
    x, y = make_regression_data(200, low=0.1, high=0.4, seed=1)
    assert x.shape == y.shape == (200, 1) and x.dtype == y.dtype == torch.float32
    assert 0.1 <= x.min() and x.max() <= 0.4
    x_again, y_again = make_regression_data(200, low=0.1, high=0.4, seed=1)
    assert torch.equal(x, x_again) and torch.equal(y, y_again)
    assert not torch.equal(x, make_regression_data(200, low=0.1, high=0.4, seed=2)[0])
    x0, y0 = make_regression_data(50, noise_std=0.0)
    assert torch.equal(y0, true_curve(x0))
    residual = y - true_curve(x)
    assert 0.0 < residual.abs().mean() < 0.2


def test_noise_in_y_is_the_data_noise_around_the_curve() -> None:
    """The noise inside the curve, ``y = f(x + e)``, gives ``y`` a noise of RMS 0.063 (not the
    0.02 of ``e``); ``noise_in_y`` is what the data show, in closed form to first order."""
    x, y = make_regression_data(200_000, seed=0)
    empirical = float((y - true_curve(x)).square().mean().sqrt())
    assert noise_in_y() == pytest.approx(empirical, rel=0.02)
    assert noise_in_y() == pytest.approx(0.02 * math.sqrt(1 + 0.9 * math.pi**2), rel=1e-4)
    assert noise_in_y(noise_std=0.0) == 0.0
    x, y = make_regression_data(200_000, low=0.1, high=0.2, noise_std=0.01, seed=1)
    empirical = float((y - true_curve(x)).square().mean().sqrt())
    assert noise_in_y(low=0.1, high=0.2, noise_std=0.01) == pytest.approx(empirical, rel=0.05)
    with pytest.raises(ValueError, match="low < high"):
        noise_in_y(low=0.5, high=0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be >= 1"),
        ({"n": 5, "low": 1.0, "high": 0.0}, "high must be >= low"),
        ({"n": 5, "noise_std": -0.1}, "noise_std must be >= 0"),
    ],
)
def test_make_regression_data_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_regression_data(**kwargs)


def test_corrupt_mnist_copy_in_the_cache_is_named_not_reported_missing(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "cache" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file in GZ_FILES:  # a complete cached copy, as torchvision's download leaves it
        with gzip.open(tiny_data_dir / "mnist" / file) as f:
            (raw / file.removesuffix(".gz")).write_bytes(f.read())
    bad = raw / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:100])
    monkeypatch.setattr(MNIST, "mirrors", [(tmp_path / "no-mirror").as_uri() + "/"])
    with pytest.raises(ValueError, match=re.escape(f"cached MNIST file {bad} is corrupt")):
        load_mnist("test", cache_dir=tmp_path / "cache")


def test_kernel_similarity_is_0_for_orthogonal_and_1_for_collapsed_kernels():
    from pyro_dwp.data import kernel_similarity

    eye = torch.eye(9).reshape(9, 3, 3)  # 9 orthogonal kernels
    assert kernel_similarity(eye) == 0
    one = torch.randn(3, 3)
    collapsed = torch.stack([one, -2 * one, 0.5 * one])  # multiples of one kernel
    assert kernel_similarity(collapsed) == pytest.approx(1)
    # two pairs at 45 degrees and one orthogonal pair: (2 * 2 * cos 45 + 2 * 0) / 6 pairs
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    c = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert kernel_similarity(torch.stack([a, b, c])) == pytest.approx(4 * 2**-0.5 / 6)
    zero = torch.zeros(2, 3, 3)  # zero kernels count as orthogonal to every other
    assert kernel_similarity(torch.cat([eye[:2], zero])) == 0
    w = torch.randn(4, 3, 3)
    assert kernel_similarity(w, max_kernels=2) == kernel_similarity(w[:2])


def test_kernel_similarity_rejects_fewer_than_two_kernels():
    from pyro_dwp.data import kernel_similarity

    with pytest.raises(ValueError, match="N >= 2"):
        kernel_similarity(torch.randn(1, 3, 3))
    with pytest.raises(ValueError, match="N >= 2"):
        kernel_similarity(torch.randn(9, 3))
