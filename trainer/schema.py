"""Refuse keys the typed schema does not know, with the nearest valid key as a suggestion.

Hydra refuses `train.setps=5` itself, but `+train.setps=5` (the fix Hydra's own message suggests) and
`++x.y=1` add the key through an open struct flag, and OmegaConf.to_object then drops it or keeps it
silently. `check_keys` walks the composed config and refuses every key that no dataclass declares.
"""

from __future__ import annotations

import dataclasses
import difflib

from omegaconf import DictConfig, OmegaConf


def closest(word: str, choices) -> str | None:
    """The choice most like `word` (difflib), or None when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return close[0] if close else None


def init_fields(cls) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls) if f.init)


def unknown_keys_message(prefix: str, unknown: list[str], valid: list[str], where: str = "") -> str:
    """'unknown key train.setps (did you mean train.steps?); valid keys of train: ...' as one line."""

    def dotted(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    near = closest(unknown[0], valid) if len(unknown) == 1 else None
    hint = f" (did you mean {dotted(near)}?)" if near else ""
    section = f" of {prefix}" if prefix else ""
    plural = "s" if len(unknown) > 1 else ""
    keys = ", ".join(map(dotted, unknown))
    return f"unknown key{plural} {keys}{where}{hint}; valid keys{section}: {', '.join(valid)}"


GROUPS = ("param", "optim", "agg")  # the strategy groups: their keys depend on the strategy chosen


def check_keys(node: DictConfig, prefix: str = "") -> None:
    """Raise ValueError naming the first key (depth first) that the node's dataclass does not declare."""
    cls = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(cls):
        valid = init_fields(cls)
        unknown = sorted(k for k in node.keys() if k not in valid)
        if unknown:
            where = f" for {prefix}={node.get('name')}" if prefix in GROUPS else ""
            raise ValueError(unknown_keys_message(prefix, unknown, valid, where))
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_keys(child, f"{prefix}.{key}" if prefix else str(key))
