"""The DWP authors' training subsets: scikit-learn's stratified ``train_test_split``, without it.

The authors' ``train-bnn.py`` draws the ``N`` MNIST training examples of data split ``s`` as

.. code-block:: python

    idxs, _ = train_test_split(np.arange(60000), train_size=N, random_state=s, stratify=labels)

over the official 60,000 training images. :func:`stratified_subset` returns the same indices
without importing scikit-learn: it replays ``StratifiedShuffleSplit``'s draws on NumPy's legacy
``RandomState`` (Mersenne Twister, whose streams NumPy keeps fixed across versions), so the
figures of a grid run on these subsets are on the authors' ten splits, not on ten others.

The per-class counts are scikit-learn's approximate mode of the multivariate hypergeometric:
each class gets ``floor(N * count / total)``, and the draws left over go to the classes of the
largest fractional remainder, ties broken at random (that draw is part of the stream). So the
subset is stratified (the class proportions of the pool), not class-balanced.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["stratified_subset"]


def stratified_subset(labels: Tensor, n: int, seed: int) -> np.ndarray:
    """The training indices of ``train_test_split(arange(len(labels)), train_size=n,
    random_state=seed, stratify=labels)``, in scikit-learn's order.

    Args:
        labels: Class labels of the pool, integer, shape ``(M,)``.
        n: Size of the subset, ``C <= n <= M - C`` for ``C`` classes (scikit-learn's bounds:
            the train and the test part each need one example of every class).
        seed: ``random_state`` of the split (the authors' ``--data_split_seed``), ``>= 0``.

    Returns:
        Indices into ``labels``, int64, shape ``(n,)``, distinct.

    Raises:
        ValueError: If ``n`` is out of range, ``seed`` is negative, or a class has fewer than
            two examples (scikit-learn's conditions).
    """
    y = labels.detach().cpu().numpy()
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (M,), got {tuple(y.shape)}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (a RandomState seed), got {seed}")
    total = len(y)
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    n_classes = len(classes)
    if class_counts.min() < 2:
        raise ValueError(
            "the least populated class has only 1 example; a stratified split needs 2 of each "
            f"class (classes with one: {classes[class_counts < 2].tolist()})"
        )
    n_test = total - n
    if not n_classes <= n <= total - n_classes:
        raise ValueError(
            f"n must be between the number of classes {n_classes} and {total - n_classes} "
            f"(the rest is the split's test part, which also needs every class), got {n}"
        )
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n, rng)
    _approximate_mode(class_counts - n_i, n_test, rng)  # the test counts: draws of the stream
    train: list[int] = []
    for i in range(n_classes):
        permutation = rng.permutation(class_counts[i])
        train.extend(class_indices[i].take(permutation)[: n_i[i]])
    return rng.permutation(np.asarray(train, dtype=np.int64))


def _approximate_mode(
    class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState
) -> np.ndarray:
    """Draws per class ``(C,)``: floors of the proportional shares, the rest to the largest
    remainders, ties broken by ``rng`` (scikit-learn's ``_approximate_mode``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(np.int64)
