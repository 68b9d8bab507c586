"""One source of truth for defaults: the dataclasses. Hydra composes exactly their defaults, no YAML under
conf/ restates one (or holds a key they lack), and keys the schema does not know are refused."""

import dataclasses
import shutil

import pytest
import yaml

import train  # noqa: F401,E402  (registers the schema and the strategies)
from tests.helpers import ROOT, compose
from trainer.config import Config
from trainer.registry import AGG, OPTIM, PARAM
from trainer.schema import check_keys

SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name not in ("param", "optim", "agg")]
ENTRIES = [(r.kind, name) for r in (PARAM, OPTIM, AGG) for name in r.names()]


def defaults_of(cls) -> dict:
    return dataclasses.asdict(cls())


def compare(where: str, prefix: str, values: dict, schema: dict) -> list[str]:
    """Keys of `values` the schema lacks, and values equal to the schema's default (a restatement)."""
    found = []
    for key, value in values.items():
        if key not in schema:
            found.append(f"{where}: {prefix}{key} is not in the schema")
        elif schema[key] == value:
            found.append(f"{where}: {prefix}{key}={value} restates the dataclass default")
    return found


def group_yaml_drift(where: str, stem: str, data: dict, registry) -> list[str]:
    found = [f"{where} shadows the dataclass of {registry.kind}={stem}"] if stem in registry.names() else []
    name = data.get("name", stem)
    schema = defaults_of(registry.get(name).config_cls) if name in registry.names() else {}
    return found + compare(where, f"{registry.kind}.", {k: v for k, v in data.items() if k != "name"}, schema)


def config_yaml_drift(where: str, data: dict) -> list[str]:
    sections = {f.name: f.default_factory() for f in dataclasses.fields(Config)}
    found = []
    for section, node in data.items():
        if section in ("defaults", "hydra"):
            continue
        if section not in sections:
            found.append(f"{where}: {section} is not a section of the schema")
            continue
        default = sections[section]
        schema = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else {}
        found += compare(where, f"{section}.", node or {}, schema)
    return found


def drift(conf_dir) -> list[str]:
    """Every way a YAML under conf_dir restates or contradicts the dataclasses (the slow, plain check)."""
    registries = {r.kind: r for r in (PARAM, OPTIM, AGG)}
    found = []
    for path in sorted(conf_dir.rglob("*.yaml")):
        where = str(path.relative_to(conf_dir))
        data = yaml.safe_load(path.read_text()) or {}
        group = registries.get(path.relative_to(conf_dir).parts[0])
        found += group_yaml_drift(where, path.stem, data, group) if group else config_yaml_drift(where, data)
    return found


def test_conf_restates_no_default():
    assert drift(ROOT / "conf") == []


def test_drift_check_catches_a_restated_default(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "optim").mkdir(exist_ok=True)
    (conf / "optim" / "adamw.yaml").write_text("name: adamw\nlr: 0.001\nbeta1: 0.9\nlrr: 1\n")
    (conf / "config.yaml").write_text((conf / "config.yaml").read_text() + "train:\n  steps: 300\n")
    found = drift(conf)
    assert any("shadows the dataclass of optim=adamw" in f for f in found)
    assert any("beta1=0.9 restates" in f for f in found) and any("lrr is not in the schema" in f for f in found)
    assert any("train.steps=300 restates" in f for f in found)


@pytest.mark.parametrize("group,name", ENTRIES)
def test_composed_group_is_exactly_the_dataclass_defaults(group, name):
    from omegaconf import OmegaConf

    registry = {r.kind: r for r in (PARAM, OPTIM, AGG)}[group]
    cls = registry.get(name).config_cls
    assert cls().name == name, f"{cls.__name__}.name must default to its registered name"
    composed = OmegaConf.to_container(compose([f"{group}={name}"])[group])
    assert composed == defaults_of(cls)


def test_composed_sections_are_exactly_the_dataclass_defaults():
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(compose([]))
    for section in SECTIONS:
        assert raw[section] == dataclasses.asdict(getattr(Config(), section)), section
    assert (raw["param"]["name"], raw["optim"]["name"], raw["agg"]["name"]) == ("full", "adamw", "mean")


def test_adamw_lr_is_the_documented_default():
    assert compose([]).optim.lr == 0.003  # README's default run and docs/RESULTS.md were measured at 3e-3


@pytest.mark.parametrize(
    "override, message",
    [
        ("+train.setps=5", r"^unknown key train.setps \(did you mean train.steps\?\); valid keys of train: .*, steps,"),
        ("++x.y=1", r"^unknown key x; valid keys: agg, data, faults, log, model, optim, param, run, train$"),
        ("+optim.lrr=1", r"^unknown key optim.lrr for optim=adamw \(did you mean optim.lr\?\)"),
        ("+param.rank=3", r"^unknown key param.rank for param=full; valid keys of param: name$"),
        ("+train.x.y=1", r"^unknown key train.x;"),
        ("+faults.atack=nan", r"^unknown key faults.atack \(did you mean faults.attack\?\)"),
    ],
)
def test_unknown_keys_refused(override, message):
    with pytest.raises(ValueError, match=message) as e:
        check_keys(compose([override]))
    assert "\n" not in str(e.value)


def test_known_keys_pass():
    check_keys(
        compose(
            [
                "param=sltrain",
                "param.rank=8",
                "optim=galore_adamw",
                "optim.rank=4",
                "agg=flag",
                "faults.byzantine_ranks=[1]",
                "train.steps=5",
            ]
        )
    )
