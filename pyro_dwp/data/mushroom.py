"""UCI Mushroom (Schlimmer, 1987) as one-hot contexts, for the contextual bandit of Blundell et
al. (2015), Section 5.3.

The file ``agaricus-lepiota.data`` (8,124 rows, comma-separated, no header; column 0 the class,
``e`` edible or ``p`` poisonous, then 22 categorical attributes) is read from
``<DIR>/mushroom/``, where ``DIR`` is the ``data_dir`` argument or else the environment variable
``PYRO_DWP_DATA`` (:data:`~pyro_dwp.data.DATA_ENV_VAR`); there is no download.

Each attribute is one-hot encoded over its values as listed in the dataset's documentation
(``agaricus-lepiota.names``), the missing ``stalk-root`` (``?``) being a value of its own:
:data:`MUSHROOM_CONTEXT_DIM` = 126 columns in the attributes' order, values in the order of
:data:`MUSHROOM_ATTRIBUTES`. Nine documented values never occur in the file (``gill-attachment``
``d`` and ``n``, ``gill-spacing`` ``d``, ``stalk-root`` ``u`` and ``z``, ``veil-type`` ``u``,
``ring-type`` ``c``, ``s`` and ``z``), so 117 of the 126 columns are ever 1: the width of an
encoding over the observed values only (the 117 often quoted). The nine columns of zeros change
nothing for a network; the fixed domain lets a row with an undocumented value be refused.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import Tensor

from pyro_dwp.data.images import DATA_ENV_VAR, _configured_root

__all__ = [
    "MUSHROOM_ATTRIBUTES",
    "MUSHROOM_CONTEXT_DIM",
    "MUSHROOM_FILE",
    "UCI_MUSHROOM_ROWS",
    "encode_mushrooms",
    "find_mushroom_file",
    "load_mushroom",
]

MUSHROOM_FILE = "agaricus-lepiota.data"
"""The data file's name, in the ``mushroom/`` subfolder of the data directory."""

UCI_MUSHROOM_ROWS = 8124
"""The rows of the UCI file (4,208 edible, 3,916 poisonous); a file with others is cut or
another one (the bandit job says so: its regret is then not the paper's)."""

MUSHROOM_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("cap-shape", "bcxfks"),
    ("cap-surface", "fgys"),
    ("cap-color", "nbcgrpuewy"),
    ("bruises", "tf"),
    ("odor", "alcyfmnps"),
    ("gill-attachment", "adfn"),
    ("gill-spacing", "cwd"),
    ("gill-size", "bn"),
    ("gill-color", "knbhgropuewy"),
    ("stalk-shape", "et"),
    ("stalk-root", "bcuezr?"),
    ("stalk-surface-above-ring", "fyks"),
    ("stalk-surface-below-ring", "fyks"),
    ("stalk-color-above-ring", "nbcgopewy"),
    ("stalk-color-below-ring", "nbcgopewy"),
    ("veil-type", "pu"),
    ("veil-color", "nowy"),
    ("ring-number", "not"),
    ("ring-type", "ceflnpsz"),
    ("spore-print-color", "knbhrouwy"),
    ("population", "acnsvy"),
    ("habitat", "glmpuwd"),
)
"""The 22 attributes in the file's order, each with its one-letter values (``?``: missing)."""

MUSHROOM_CONTEXT_DIM = sum(len(values) for _, values in MUSHROOM_ATTRIBUTES)
"""Width of a one-hot context: 126."""

_CLASSES = {"e": True, "p": False}
# Column offset of each attribute's first value in the one-hot encoding.
_OFFSETS = tuple(
    sum(len(v) for _, v in MUSHROOM_ATTRIBUTES[:i]) for i in range(len(MUSHROOM_ATTRIBUTES))
)


def find_mushroom_file(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The path of ``agaricus-lepiota.data``: ``<data_dir>/mushroom/`` or
    ``$PYRO_DWP_DATA/mushroom/``.

    Raises:
        FileNotFoundError: If no data directory is configured or the file is not there; the
            message names the path looked at and where to put the file.
    """
    hint = (
        f"Put {MUSHROOM_FILE} (UCI Mushroom) into <DIR>/mushroom/ and pass data_dir=<DIR> "
        f"(pyro-dwp: --data-dir DIR) or set the environment variable {DATA_ENV_VAR}=<DIR>."
    )
    root = _configured_root(data_dir)
    if root is None:
        raise FileNotFoundError(
            f"No data directory for UCI Mushroom: the data_dir argument is None and the "
            f"environment variable {DATA_ENV_VAR} is not set. {hint}"
        )
    base, origin = root
    path = base / "mushroom" / MUSHROOM_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"UCI Mushroom file {path} not found (the mushroom/ subfolder of {base}, given by "
            f"{origin}). {hint}"
        )
    return path


def encode_mushrooms(lines: list[str], source: str = "<lines>") -> tuple[Tensor, Tensor]:
    """One-hot encode rows of ``agaricus-lepiota.data``.

    Args:
        lines: The file's lines (blank lines are skipped).
        source: What the lines come from (a path), for messages.

    Returns:
        ``contexts`` float32 ``(N, 126)`` with one 1 per attribute (22 per row), and ``edible``
        bool ``(N,)``.

    Raises:
        ValueError: On a row without 23 fields or with an unknown class or value, naming
            ``source``, the line number (from 1), the attribute and the value.
    """
    rows: list[list[int]] = []
    edible: list[bool] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        fields = text.split(",")
        where = f"{source}, line {number}"
        if len(fields) != len(MUSHROOM_ATTRIBUTES) + 1:
            raise ValueError(
                f"{where}: expected {len(MUSHROOM_ATTRIBUTES) + 1} comma-separated fields "
                f"(the class, then 22 attributes), got {len(fields)}: {text[:80]!r}"
            )
        if fields[0] not in _CLASSES:
            raise ValueError(f"{where}: the class must be 'e' or 'p', got {fields[0]!r}")
        columns = []
        for (name, values), offset, value in zip(
            MUSHROOM_ATTRIBUTES, _OFFSETS, fields[1:], strict=True
        ):
            if len(value) != 1 or value not in values:
                raise ValueError(
                    f"{where}: attribute {name} has the value {value!r}, not one of "
                    f"{', '.join(values)}"
                )
            columns.append(offset + values.index(value))
        rows.append(columns)
        edible.append(_CLASSES[fields[0]])
    if not rows:
        raise ValueError(f"{source} holds no rows")
    index = torch.tensor(rows)
    contexts = torch.zeros(len(rows), MUSHROOM_CONTEXT_DIM)
    contexts.scatter_(1, index, 1.0)
    return contexts, torch.tensor(edible)


def load_mushroom(data_dir: str | os.PathLike[str] | None = None) -> tuple[Tensor, Tensor]:
    """UCI Mushroom as one-hot contexts and edibility (see the module docstring).

    Args:
        data_dir: Directory holding ``mushroom/agaricus-lepiota.data``; if ``None``, the
            environment variable ``PYRO_DWP_DATA``.

    Returns:
        ``contexts`` float32 ``(N, 126)`` and ``edible`` bool ``(N,)`` (fresh copies), ``N`` the
        file's rows: 8,124 (:data:`UCI_MUSHROOM_ROWS`) for the UCI file.

    Raises:
        FileNotFoundError: If the file cannot be found (see :func:`find_mushroom_file`).
        ValueError: If a row is malformed, naming the file and line.
    """
    path = find_mushroom_file(data_dir).resolve()
    contexts, edible = _load(path, path.stat().st_mtime_ns)
    return contexts.clone(), edible.clone()


@functools.lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int) -> tuple[Tensor, Tensor]:
    """The encoded file, cached per path and modification time."""
    return encode_mushrooms(path.read_text().splitlines(), str(path))
