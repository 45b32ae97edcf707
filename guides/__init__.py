"""Guides (variational families) for the models of :mod:`pyro_dwp.models`."""

from .bbb import BBBNormal
from .initialization import init_to_module
from .reverse import ReverseModelGuide

__all__ = ["BBBNormal", "ReverseModelGuide", "init_to_module"]
