"""Builders that turn public preference datasets into the exchange format, one module per dataset.

Each is ``build_<name>(source, *, seed=0, ...) -> datasets.Dataset``; ``source`` is a local file or
directory in the dataset's public schema, a ``datasets`` object, or the hub name (default; needs
the hub to be reachable).
"""

from collections.abc import Callable

import datasets

from .pku_saferlhf import ARCHETYPES, build_pku_saferlhf
from .prism import build_prism
from .ultrafeedback import ATTRIBUTES, build_ultrafeedback

__all__ = ["ARCHETYPES", "ATTRIBUTES", "BUILDERS", "build_pku_saferlhf", "build_prism", "build_ultrafeedback"]

BUILDERS: dict[str, Callable[..., datasets.Dataset]] = {
    "prism": build_prism,
    "ultrafeedback": build_ultrafeedback,
    "pku_saferlhf": build_pku_saferlhf,
}
