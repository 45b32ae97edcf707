"""Fingerprints of a training run's settings, compared before a checkpoint is resumed."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pyro.optim import PyroOptim
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["describe", "differences", "file_digest", "tensor_digest"]

_SMALL = 8  # tensors with at most this many elements are described by their values
_MAX_DEPTH = 8
# Attributes that are not settings: guide internals filled in by its first call, the model a
# guide wraps (described on its own), an optimiser's per-parameter objects.
_SKIPPED = frozenset({"prototype_trace", "master", "model", "optim_objs", "training"})


def tensor_digest(*tensors: Tensor) -> str:
    """A 16-hex-digit BLAKE2 digest of the tensors' shapes, dtypes and values."""
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def describe(obj: Any, _depth: int = 0) -> Any:
    """A summary of ``obj`` made of dicts, lists, strings and numbers, equal for equal settings.

    - ``None``, numbers, strings: themselves; tensors: their values (at most 8 elements) or
      their shape and :func:`tensor_digest`.
    - Functions and classes: ``module.qualname``; ``functools.partial``: function and keywords.
    - Mappings, lists, tuples: element by element.
    - Distributions: type, parameters (``arg_constraints``), public numbers and strings, base
      distribution; one that is also an ``nn.Module`` (a prior owning a network) adds a digest
      of its ``state_dict``.
    - Pyro optimisers: type and constructor arguments (a learning-rate scheduler's too).
    - Other objects (networks, models, guides, likelihoods): type, public attributes, private
      numbers and strings (e.g. a guide's ``_init_scale``) and, for modules, the submodules.
      Learned values of modules are not part of it (a resumed run takes them from the
      checkpoint), nor are ``prototype_trace``, ``master``, ``model``, ``training``.
    """
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, Tensor):
        if obj.numel() <= _SMALL:
            return obj.detach().cpu().tolist()
        return {"shape": list(obj.shape), "digest": tensor_digest(obj)}
    if _depth > _MAX_DEPTH:
        return _qualname(type(obj))
    d = _depth + 1
    if isinstance(obj, functools.partial):
        return {"function": describe(obj.func, d), "keywords": describe(obj.keywords, d)}
    if isinstance(obj, Mapping):
        return {str(k): describe(v, d) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [describe(v, d) for v in obj]
    if isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__")):
        return _qualname(obj)
    if isinstance(obj, PyroOptim):
        out = {"type": _qualname(type(obj)), "args": describe(obj.pt_optim_args, d)}
        if hasattr(obj, "pt_scheduler_constructor"):  # a PyroLRScheduler: the schedule too
            out["schedule"] = describe(
                {k: v for k, v in obj.kwargs.items() if k not in ("optimizer", "optim_args")}, d
            )
        if getattr(obj, "lr_lambda", None) is not None:  # a JointOptimizer's schedule
            out["schedule"] = describe({"lr_lambda": obj.lr_lambda}, d)
        if getattr(obj, "lr_factor", None) is not None:  # its rates per parameter
            out["lr_factor"] = describe(obj.lr_factor, d)
        return out
    out: dict[str, Any] = {"type": _qualname(type(obj))}
    if isinstance(obj, Distribution):
        for k in obj.arg_constraints:
            if k in vars(obj):
                out[k] = describe(vars(obj)[k], d)
        for k, v in sorted(vars(obj).items()):  # e.g. Independent's reinterpreted_batch_ndims
            if not k.startswith("_") and isinstance(v, int | float | str):
                out[k] = v
        if hasattr(obj, "base_dist"):
            out["base_dist"] = describe(obj.base_dist, d)
        if isinstance(obj, nn.Module):
            out["state"] = tensor_digest(*obj.state_dict().values())
        return out
    for k, v in sorted(vars(obj).items()):
        if k in _SKIPPED:
            continue
        if not k.startswith("_") or (isinstance(v, int | float | str) and not k.startswith("__")):
            out[k] = describe(v, d)
    if isinstance(obj, nn.Module):
        out.update({f"{k}": describe(m, d) for k, m in obj.named_children()})
    return out


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The settings that differ between two :func:`describe` summaries, one line each:
    ``"path.to.setting: old -> new"``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            path = f"{prefix}.{k}" if prefix else str(k)
            out += differences(old.get(k, "(absent)"), new.get(k, "(absent)"), path)
        return out
    if old == new:
        return []
    return [f"{prefix or 'value'}: {_short(old)} -> {_short(new)}"]


def _short(v: Any, limit: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
