"""MNIST and notMNIST as tensors, read through :class:`torchvision.datasets.MNIST`.

Where the files come from (the first that applies wins):

1. the ``data_dir`` argument;
2. the environment variable ``PYRO_DWP_DATA`` (:data:`DATA_ENV_VAR`);
3. MNIST only, on a machine with internet: torchvision's download into the cache directory.
   notMNIST has no download; without 1. or 2. it raises :class:`FileNotFoundError`.

``data_dir`` and ``PYRO_DWP_DATA`` name a directory with the subfolders ``mnist/`` and
``notmnist/``, each holding the four gzip-compressed IDX files ``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.

The files are decompressed once into the cache directory (the ``cache_dir`` argument, else the
environment variable ``PYRO_DWP_CACHE`` (:data:`CACHE_ENV_VAR`), else ``~/.cache/pyro_dwp``), as
``<cache>/MNIST/raw/`` and ``<cache>/notMNIST/raw/``, where torchvision reads them. A cached copy
is written again when its source file's modification time changes. The decoded tensors are kept
in memory for the life of the process, so repeated calls are cheap.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.datasets import MNIST
from torchvision.datasets.mnist import read_image_file, read_label_file

from pyro_dwp.data.splits import stratified_subset

__all__ = [
    "BBB_PIXEL_SCALE",
    "CACHE_ENV_VAR",
    "DATA_ENV_VAR",
    "DWP_PIXEL_SCALE",
    "SUBSETS",
    "Subset",
    "find_data_dir",
    "load_mnist",
    "load_notmnist",
    "random_affine",
]

DATA_ENV_VAR = "PYRO_DWP_DATA"
"""Environment variable naming the directory that holds ``mnist/`` and ``notmnist/``."""

CACHE_ENV_VAR = "PYRO_DWP_CACHE"
"""Environment variable naming the directory for the decompressed files."""

_GZ_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Display names, also the cache subfolders that torchvision reads (``<cache>/<title>/raw``).
_TITLES = {"mnist": "MNIST", "notmnist": "notMNIST"}
_MNIST_VALID_SIZE = 10_000
BBB_PIXEL_SCALE = 126.0
"""Pixels are divided by this in Blundell et al. (2015): values in ``[0, 255 / 126]``."""
DWP_PIXEL_SCALE = 255.0
"""Pixels are divided by this in the DWP authors' code (source and target nets): ``[0, 1]``."""
_NUM_CLASSES = 10
Subset = Literal["balanced", "stratified"]
SUBSETS: tuple[Subset, ...] = ("balanced", "stratified")
"""How :func:`load_mnist` draws ``n`` examples: ``"balanced"`` (ours) or ``"stratified"``
(scikit-learn's stratified split, the DWP authors')."""
_IMAGE_SHAPE = (28, 28)
_CHUNK_BYTES = 1 << 20
# What torchvision's IDX reader raises on a file of the wrong magic number, type or length.
_IDX_ERRORS = (AssertionError, KeyError, RuntimeError, TypeError, ValueError)

_PathLike = str | os.PathLike[str]


class _NotMNIST(MNIST):
    """torchvision's MNIST reader for notMNIST (letters A-J as labels 0-9) in ``root/notMNIST``."""

    classes = list("ABCDEFGHIJ")

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, _TITLES["notmnist"], "raw")

    @property
    def processed_folder(self) -> str:
        return os.path.join(self.root, _TITLES["notmnist"], "processed")

    def download(self) -> None:
        raise NotImplementedError(
            f"notMNIST cannot be downloaded: put its files into <DIR>/notmnist/ and set "
            f"{DATA_ENV_VAR}=<DIR> or pass data_dir=<DIR>."
        )


def find_data_dir(name: Literal["mnist", "notmnist"], data_dir: _PathLike | None = None) -> Path:
    """Find the folder holding the four gzip-compressed IDX files of a dataset.

    Args:
        name: ``"mnist"`` or ``"notmnist"``, the name of the subfolder.
        data_dir: Directory containing the subfolder ``name``. If ``None``, the environment
            variable ``PYRO_DWP_DATA`` is used.

    Returns:
        ``<data_dir>/<name>``, in which all four files exist.

    Raises:
        ValueError: If ``name`` is not a known dataset.
        FileNotFoundError: If no data directory is configured or files are missing. The message
            names the missing files, the directory looked in and where to put which files.
    """
    if name not in _TITLES:
        raise ValueError(f"name must be one of {sorted(_TITLES)}, got {name!r}")
    root = _configured_root(data_dir)
    if root is None:
        raise FileNotFoundError(
            f"No data directory for {_TITLES[name]}: the data_dir argument is None and the "
            f"environment variable {DATA_ENV_VAR} is not set. {_placement_hint(name)}"
        )
    base, origin = root
    folder = base / name
    missing = [file for file in _GZ_FILES if not (folder / file).is_file()]
    if missing:
        message = (
            f"{_TITLES[name]} file(s) not found: {', '.join(missing)}. Looked in {folder} (the "
            f"{name}/ subfolder of {base}, given by {origin}). {_placement_hint(name)}"
        )
        if all((base / file).is_file() for file in missing):
            message += f" {base} holds these files itself: give its parent directory instead."
        raise FileNotFoundError(message)
    return folder


def load_mnist(
    split: Literal["train", "valid", "train+valid", "test"],
    data_dir: _PathLike | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
    subset: Subset = "balanced",
    flatten: bool = True,
    cache_dir: _PathLike | None = None,
    pixel_scale: float = BBB_PIXEL_SCALE,
) -> tuple[Tensor, Tensor]:
    """Load a split of MNIST, pixels divided by ``pixel_scale`` (Blundell et al. (2015): 126).

    The splits are those of the paper: ``"train"`` is the first 50,000 images of the official
    training set, ``"valid"`` its last 10,000, ``"test"`` the official 10,000 test images;
    ``"train+valid"`` is the whole official training set (60,000 images), the pool of the DWP
    authors' training subsets.

    Args:
        split: ``"train"``, ``"valid"``, ``"train+valid"`` or ``"test"``.
        data_dir: Directory containing ``mnist/`` (see the module docstring); if ``None``, the
            environment variable ``PYRO_DWP_DATA``, else torchvision's download.
        n: If given, return a random subset of ``n`` examples of the split, in dataset order.
            With ``subset="balanced"``, when ``n`` is divisible by 10 the subset is
            class-balanced (``n / 10`` examples per digit), otherwise a uniform random subset;
            with ``subset="stratified"`` it is scikit-learn's stratified split of random state
            ``seed`` (:func:`~pyro_dwp.data.splits.stratified_subset`, the DWP authors').
        seed: Seed of the subset; the same ``seed`` and ``n`` always give the same subset.
        subset: How ``n`` examples are drawn (above); ignored without ``n``.
        flatten: Return images of shape ``(N, 784)`` if true, else ``(N, 1, 28, 28)``.
        cache_dir: Directory for the decompressed files; default ``PYRO_DWP_CACHE`` or
            ``~/.cache/pyro_dwp``.
        pixel_scale: Divisor of the 0..255 pixel values (> 0): :data:`BBB_PIXEL_SCALE` (126) or
            :data:`DWP_PIXEL_SCALE` (255, the deep weight prior's experiments).

    Returns:
        Images, float32 in ``[0, 255 / pixel_scale]``, shape ``(N, 784)`` or ``(N, 1, 28, 28)``, and
        labels, int64 in ``0..9``, shape ``(N,)``.

    Raises:
        ValueError: On an unknown split or subset, an ``n`` out of range, or a corrupt data file
            (the message names the file).
        FileNotFoundError: If the files cannot be found (nor downloaded).
    """
    _check_split(split, ("train", "valid", "train+valid", "test"))
    images, labels = _raw_split("mnist", split != "test", data_dir, cache_dir)
    if split in ("train", "valid"):
        if len(labels) <= _MNIST_VALID_SIZE:
            raise ValueError(
                f"the MNIST training file holds {len(labels)} images, too few to set the last "
                f"{_MNIST_VALID_SIZE} apart for validation"
            )
        n_train = len(labels) - _MNIST_VALID_SIZE
        part = slice(0, n_train) if split == "train" else slice(n_train, None)
        images, labels = images[part], labels[part]
    return _prepare(
        images, labels, n=n, seed=seed, subset=subset, flatten=flatten, pixel_scale=pixel_scale
    )


def load_notmnist(
    split: Literal["train", "test"],
    data_dir: _PathLike | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
    flatten: bool = True,
    cache_dir: _PathLike | None = None,
    pixel_scale: float = BBB_PIXEL_SCALE,
) -> tuple[Tensor, Tensor]:
    """Load a split of notMNIST (letters A-J as labels 0-9), pixels divided by ``pixel_scale``.

    ``"train"`` is the whole of notMNIST_small (18,724 images), ``"test"`` a separate set of
    3,493 letters. There is no download: the files must be found through ``data_dir`` or
    ``PYRO_DWP_DATA``.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: Directory containing ``notmnist/``; if ``None``, ``PYRO_DWP_DATA``.
        n: If given, a random subset of ``n`` examples, class-balanced when ``n`` is divisible
            by 10 (see :func:`load_mnist`).
        seed: Seed of the subset.
        flatten: Return images of shape ``(N, 784)`` if true, else ``(N, 1, 28, 28)``.
        cache_dir: Directory for the decompressed files; default ``PYRO_DWP_CACHE`` or
            ``~/.cache/pyro_dwp``.
        pixel_scale: Divisor of the 0..255 pixel values (> 0): :data:`BBB_PIXEL_SCALE` (126) or
            :data:`DWP_PIXEL_SCALE` (255, the deep weight prior's experiments).

    Returns:
        Images, float32 in ``[0, 255 / pixel_scale]``, shape ``(N, 784)`` or ``(N, 1, 28, 28)``, and
        labels, int64 in ``0..9``, shape ``(N,)``.

    Raises:
        ValueError: On an unknown split, an ``n`` out of range, or a corrupt data file.
        FileNotFoundError: If the files cannot be found.
    """
    _check_split(split, ("train", "test"))
    images, labels = _raw_split("notmnist", split == "train", data_dir, cache_dir)
    return _prepare(
        images, labels, n=n, seed=seed, subset="balanced", flatten=flatten, pixel_scale=pixel_scale
    )


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def _configured_root(data_dir: _PathLike | None) -> tuple[Path, str] | None:
    """The data directory and a phrase saying where it came from, or ``None`` if not set."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "the data_dir argument"
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser(), f"the environment variable {DATA_ENV_VAR}"
    return None


def _cache_root(cache_dir: _PathLike | None) -> Path:
    if cache_dir is None:
        env = os.environ.get(CACHE_ENV_VAR)
        cache_dir = env if env else Path.home() / ".cache" / "pyro_dwp"
    return Path(cache_dir).expanduser().resolve()


def _placement_hint(name: str) -> str:
    return (
        f"Put the four files {', '.join(_GZ_FILES)} of {_TITLES[name]} into <DIR>/{name}/ and "
        f"pass data_dir=<DIR> or set the environment variable {DATA_ENV_VAR}=<DIR>."
    )


def _raw_split(
    name: str, train: bool, data_dir: _PathLike | None, cache_dir: _PathLike | None
) -> tuple[Tensor, Tensor]:
    """The uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)`` of one official file pair."""
    cache = _cache_root(cache_dir)
    if name == "mnist" and _configured_root(data_dir) is None:
        return _read_split(name, train, None, cache, ())
    source = find_data_dir(name, data_dir).resolve()
    stats = [(source / file).stat() for file in _GZ_FILES]
    stamp = tuple((stat.st_mtime_ns, stat.st_size) for stat in stats)
    return _read_split(name, train, source, cache, stamp)


@functools.lru_cache(maxsize=8)
def _read_split(
    name: str, train: bool, source: Path | None, cache: Path, stamp: tuple[tuple[int, int], ...]
) -> tuple[Tensor, Tensor]:
    """Read one file pair, from ``source`` or (``source=None``, MNIST) torchvision's download.

    Cached per process, keyed by all arguments; ``stamp`` (the source files' modification times
    and sizes) is part of the key only, so that changed files are read again. The returned
    tensors are shared and must not be modified in place.
    """
    dataset = _download_mnist(train, cache) if source is None else _open(name, train, source, cache)
    return dataset.data, dataset.targets


def _download_mnist(train: bool, cache: Path) -> MNIST:
    raw = cache / _TITLES["mnist"] / "raw"
    cached = all((raw / file.removesuffix(".gz")).is_file() for file in _GZ_FILES)
    try:
        return MNIST(str(cache), train=train, download=True)
    except _IDX_ERRORS as err:
        if not cached:  # the download failed
            raise FileNotFoundError(_not_found(cache, err)) from err
        # torchvision found a complete copy and did not download: the copy is corrupt.
        prefix = "train" if train else "t10k"
        bad = ", ".join(str(raw / f.removesuffix(".gz")) for f in _unreadable_files(raw, prefix))
        raise ValueError(
            f"cached MNIST file {bad} is corrupt (torchvision: {err!r}): delete it to download "
            f"it again, or pass the data folder. {_placement_hint('mnist')}"
        ) from err
    except OSError as err:
        raise FileNotFoundError(_not_found(cache, err)) from err


def _not_found(cache: Path, err: Exception) -> str:
    return (
        f"MNIST not found: the data_dir argument is None, the environment variable "
        f"{DATA_ENV_VAR} is not set, and downloading MNIST into {cache / 'MNIST' / 'raw'} "
        f"failed ({err}). {_placement_hint('mnist')}"
    )


def _open(name: str, train: bool, source: Path, cache: Path) -> MNIST:
    """Decompress the files of ``source`` into the cache and read one split with torchvision."""
    raw = cache / _TITLES[name] / "raw"
    for file in _GZ_FILES:
        _decompress(source / file, raw / file.removesuffix(".gz"))
    prefix = "train" if train else "t10k"
    try:
        dataset = (_NotMNIST if name == "notmnist" else MNIST)(str(cache), train=train)
    except _IDX_ERRORS as err:
        bad = ", ".join(str(source / file) for file in _unreadable_files(raw, prefix))
        raise ValueError(
            f"{_TITLES[name]} data file {bad} is corrupt: it is not an IDX file of the expected "
            f"magic number, type and length (torchvision: {err!r}). Replace it with an intact copy."
        ) from err
    if len(dataset.data) != len(dataset.targets) or dataset.data.shape[1:] != _IMAGE_SHAPE:
        raise ValueError(
            f"{_TITLES[name]} files {source / f'{prefix}-images-idx3-ubyte.gz'} and "
            f"{source / f'{prefix}-labels-idx1-ubyte.gz'} do not match: images of shape "
            f"{tuple(dataset.data.shape)} (expected (N, 28, 28)), {len(dataset.targets)} labels."
        )
    return dataset


def _unreadable_files(raw: Path, prefix: str) -> list[str]:
    """Names (``.gz``) of the image/label files of a split that torchvision cannot read alone.

    Both are named if each can be read on its own (the failure then lies in their combination).
    """
    readers = {
        f"{prefix}-images-idx3-ubyte.gz": read_image_file,
        f"{prefix}-labels-idx1-ubyte.gz": read_label_file,
    }
    bad = []
    for file, reader in readers.items():
        try:
            reader(str(raw / file.removesuffix(".gz")))
        except _IDX_ERRORS:
            bad.append(file)
    return bad or list(readers)


def _decompress(src: Path, dest: Path) -> None:
    """Decompress ``src`` into ``dest`` atomically, unless ``dest`` is already its current copy.

    ``dest`` takes the modification time of ``src``; a differing time marks it out of date.
    """
    src_stat = src.stat()
    if dest.is_file() and dest.stat().st_mtime_ns == src_stat.st_mtime_ns:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            with open(tmp, "xb") as out, gzip.open(src, "rb") as compressed:
                shutil.copyfileobj(compressed, out, _CHUNK_BYTES)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise ValueError(
                f"Data file {src} is corrupt: it is not a complete gzip file ({err}). "
                "Replace it with an intact copy."
            ) from err
        os.utime(tmp, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _prepare(
    images: Tensor,
    labels: Tensor,
    *,
    n: int | None,
    seed: int,
    subset: Subset,
    flatten: bool,
    pixel_scale: float,
) -> tuple[Tensor, Tensor]:
    """Subset, scale and shape ``(N, 28, 28)`` uint8 images and ``(N,)`` labels (new tensors)."""
    if not pixel_scale > 0:
        raise ValueError(f"pixel_scale must be > 0, got {pixel_scale}")
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    if n is None:
        labels = labels.clone()
    else:
        if subset == "stratified":
            index = torch.from_numpy(stratified_subset(labels, n, seed)).sort().values
        else:
            index = _subset_indices(labels, n, seed)
        images, labels = images[index], labels[index]
    x = images.to(torch.float32).div_(pixel_scale)
    return (x.reshape(len(x), -1) if flatten else x.unsqueeze(1)), labels


def _subset_indices(labels: Tensor, n: int, seed: int) -> Tensor:
    """Sorted indices ``(n,)`` of a seeded subset, class-balanced when 10 divides ``n``."""
    total = len(labels)
    if not 1 <= n <= total:
        raise ValueError(f"n must be between 1 and the split size {total}, got {n}")
    generator = torch.Generator().manual_seed(seed)
    if n % _NUM_CLASSES:
        return torch.randperm(total, generator=generator)[:n].sort().values
    per_class = n // _NUM_CLASSES
    counts = torch.bincount(labels, minlength=_NUM_CLASSES)[:_NUM_CLASSES]
    short = (counts < per_class).nonzero().flatten().tolist()
    if short:
        raise ValueError(
            f"cannot draw {per_class} examples of class {short[0]} for a class-balanced subset "
            f"of n={n}: the split has only {counts[short[0]].item()}"
        )
    shuffled = torch.randperm(total, generator=generator)
    by_class = shuffled[torch.argsort(labels[shuffled], stable=True)]  # random within a class
    starts = (counts.cumsum(0) - counts).tolist()
    return torch.cat([by_class[start : start + per_class] for start in starts]).sort().values


def random_affine(
    images: Tensor,
    generator: torch.Generator,
    *,
    degrees: float = 10.0,
    scale: float = 0.1,
    shift: float = 2.0,
) -> Tensor:
    """Each image under its own random rotation, zoom and translation (bilinear, zero fill).

    Args:
        images: ``(B, C, H, W)`` with ``H == W``.
        generator: CPU generator drawing the ``(B, 4)`` parameters (so a seed fixes them on any
            device).
        degrees: Rotations are uniform in ``[-degrees, degrees]``.
        scale: Zoom factors are uniform in ``[1 - scale, 1 + scale]``.
        shift: Translations are uniform in ``[-shift, shift]`` pixels along each axis.

    Returns:
        ``(B, C, H, W)``, same dtype and device.
    """
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"random_affine expects square images (B, C, H, W), got {tuple(images.shape)}"
        )
    if not (degrees >= 0 and 0 <= scale < 1 and shift >= 0):
        raise ValueError(
            f"need degrees >= 0, 0 <= scale < 1, shift >= 0; got {degrees}, {scale}, {shift}"
        )
    u = torch.rand(len(images), 4, generator=generator, dtype=torch.float64) * 2 - 1
    angle = u[:, 0] * degrees * torch.pi / 180
    zoom = 1 + u[:, 1] * scale
    theta = torch.zeros(len(images), 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) / zoom
    theta[:, 0, 1] = -torch.sin(angle) / zoom
    theta[:, 1, 0] = torch.sin(angle) / zoom
    theta[:, :, 2] = u[:, 2:] * shift * 2 / images.shape[-1]  # pixels -> [-1, 1] coordinates
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
