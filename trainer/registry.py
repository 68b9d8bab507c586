"""Name -> (config dataclass, factory) tables, one per strategy kind.

A method registers itself once, from its own file:

    @PARAM.register("sltrain", SLTrainConfig)
    class SLTrain(ParamStrategy): ...

and users pick it with the Hydra group choice `param=sltrain`: registering also stores the dataclass
in Hydra's ConfigStore as the group option `param/sltrain`, so the dataclass is the one place its
defaults live (no YAML restates them) and `param.rank=8` is typed. The trainer only ever looks names
up here, so adding a method never touches `trainer/` or `conf/`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from trainer.schema import closest, init_fields, unknown_keys_message


@dataclass(frozen=True)
class Entry:
    name: str
    config_cls: type
    factory: Callable[..., Any]


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config_cls: type):
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"{self.kind} strategy {name!r}: config must be a dataclass, got {config_cls!r}")

        def decorator(factory):
            if name in self._entries:
                raise ValueError(f"{self.kind} strategy {name!r} is registered twice")
            self._entries[name] = Entry(name, config_cls, factory)
            ConfigStore.instance().store(group=self.kind, name=name, node=config_cls)
            return factory

        return decorator

    def unregister(self, name: str) -> None:
        """For tests that register a throw-away strategy."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            near = closest(name, self.names())
            hint = f" (did you mean {self.kind}={near}?)" if near else ""
            raise ValueError(f"unknown {self.kind}={name!r}{hint}; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def make_config(self, raw: dict[str, Any]):
        """`{"name": ..., **fields}` (a Hydra group node) -> the entry's typed config."""
        raw = dict(raw)
        name = raw.pop("name", None)
        if name is None:
            raise ValueError(f"{self.kind} config has no 'name'; set {self.kind}=<one of: {', '.join(self.names())}>")
        entry = self.get(name)
        fields = init_fields(entry.config_cls)
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ValueError(unknown_keys_message(self.kind, unknown, fields, f" for {self.kind}={name}"))
        return entry.config_cls(**raw)

    def build(self, name: str, *args, **kwargs):
        return self.get(name).factory(*args, **kwargs)


PARAM = Registry("param")  # how weights are held: factory(cfg, ctx) -> ParamStrategy
OPTIM = Registry("optim")  # the optimizer: factory(cfg, model, ctx) -> torch.optim.Optimizer
AGG = Registry("agg")  # how workers' gradients are combined: factory(cfg, ctx) -> Aggregator


def config_name(cfg) -> str:
    """The registry name a typed strategy config was made for."""
    for registry in (PARAM, OPTIM, AGG):
        for entry in registry._entries.values():
            if type(cfg) is entry.config_cls:
                return entry.name
    raise ValueError(f"{type(cfg).__name__} is not a registered strategy config")
