"""The DWP authors' training subsets (``pyro_dwp.data.splits``) against scikit-learn's own.

``data_sklearn_splits.json`` holds indices that scikit-learn 1.9.1 returned for
``train_test_split(arange(M), train_size=n, random_state=seed, stratify=labels)`` (its
``generated_by`` says how): on two synthetic label sets (classes of unequal and of equal sizes,
the latter making every remainder a tie) and on the 60,000 MNIST training labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

from pyro_dwp.data import load_mnist, stratified_subset

FIXTURE = json.loads((Path(__file__).parent / "data_sklearn_splits.json").read_text())
needs_mnist = needs_shared_data(
    "mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"
)


@pytest.fixture(scope="module")
def mnist_pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor]:
    """The 60,000 official MNIST training images ``(60000, 784)`` and labels ``(60000,)``."""
    cache = tmp_path_factory.mktemp("cache")
    return load_mnist("train+valid", SHARED_DATA, cache_dir=cache, pixel_scale=255.0)


@pytest.mark.parametrize(
    "case", FIXTURE["synthetic"], ids=lambda c: f"{c['labels']}-n{c['n']}-s{c['seed']}"
)
def test_synthetic_splits_equal_scikit_learns(case: dict) -> None:
    labels = torch.tensor(FIXTURE["labels"][case["labels"]])
    train = stratified_subset(labels, case["n"], case["seed"])
    assert train.dtype == np.int64 and train.tolist() == case["train"]


@needs_mnist
def test_mnist_splits_equal_scikit_learns(mnist_pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The authors' ``--data_split_seed`` subsets of the 60,000 training images, index for index."""
    _, labels = mnist_pool
    assert labels.shape == (60_000,)
    for case in FIXTURE["mnist_train"]:
        train = stratified_subset(labels, case["n"], case["seed"])
        assert train.tolist() == case["train"], (case["n"], case["seed"])


@pytest.mark.parametrize("n", [10, 37, 100, 333, 590])
def test_counts_are_the_proportional_shares_rounded(n: int) -> None:
    """Each class gets ``floor(n p_k)`` or one more, ``n`` in all, distinct indices of its own
    class; the same seed gives the same subset, another seed another."""
    rng = np.random.default_rng(1)
    labels = torch.from_numpy(rng.integers(0, 10, size=600) ** 2 % 7)  # unequal classes
    counts = torch.bincount(labels).numpy()
    train = stratified_subset(labels, n, seed=5)
    assert len(train) == n and len(set(train.tolist())) == n
    drawn = torch.bincount(labels[torch.from_numpy(train)], minlength=len(counts)).numpy()
    share = n * counts / counts.sum()
    assert np.all((drawn == np.floor(share)) | (drawn == np.floor(share) + 1))
    assert np.array_equal(stratified_subset(labels, n, seed=5), train)
    assert not np.array_equal(stratified_subset(labels, n, seed=6), train)


@needs_mnist
def test_load_mnist_returns_the_stratified_subset(
    mnist_pool: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    """``load_mnist("train+valid", n=..., subset="stratified")``: the examples of
    :func:`stratified_subset`'s indices, in dataset order, scaled as asked."""
    images, labels = mnist_pool
    x, y = load_mnist(
        "train+valid", SHARED_DATA, n=50, seed=9, subset="stratified", flatten=False,
        cache_dir=tmp_path, pixel_scale=255.0,
    )  # fmt: skip
    index = np.sort(stratified_subset(labels, 50, 9))
    assert x.shape == (50, 1, 28, 28) and y.shape == (50,)
    assert torch.equal(x.flatten(1), images[index]) and torch.equal(y, labels[index])
    assert float(x.max()) <= 1.0


def test_bad_input_is_named() -> None:
    labels = torch.arange(20) % 4
    with pytest.raises(ValueError, match=r"labels must have shape \(M,\), got \(4, 5\)"):
        stratified_subset(labels.reshape(4, 5), 8, 0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        stratified_subset(labels, 8, -1)
    with pytest.raises(ValueError, match="n must be between the number of classes 4 and 16"):
        stratified_subset(labels, 3, 0)
    with pytest.raises(ValueError, match="n must be between the number of classes 4 and 16"):
        stratified_subset(labels, 17, 0)
    with pytest.raises(ValueError, match=r"needs 2 of each class \(classes with one: \[9\]\)"):
        stratified_subset(torch.cat([labels, torch.tensor([9])]), 8, 0)
