"""Swapping one submodule of a torch module for another: what every rewrite does once it has built the new one."""

from __future__ import annotations

from torch import nn


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where ``root``'s submodule ``name`` (a dotted path, as named_modules gives it) is."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if isinstance(parent, nn.ModuleList):
        parent[int(child)] = new
    else:
        setattr(parent, child, new)
