"""Every registered aggregator composes into its typed config; bad values are one-line errors."""
import pytest

from tests.helpers import compose
from trainer.registry import AGG

import train

NAMES = AGG.names()


@pytest.mark.parametrize("name", NAMES)
def test_yaml_composes(name, tmp_path):
    cfg = train.load_config(compose([f"agg={name}", f"run.out_dir={tmp_path}"]))
    assert cfg.agg.name == name


@pytest.mark.parametrize("override, message", [
    ("agg.mode=ring", r"agg.mode: 'ring' is not one of sharded, allgather"),
    ("agg.bucket_numel=0", r"agg.bucket_numel: must be at least 1"),
])
def test_bad_values(override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train.load_config(compose(["agg=flag", override, f"run.out_dir={tmp_path}"]))


@pytest.mark.parametrize("name", ["flag", "median", "trimmed_mean", "multi_krum"])
def test_robust_aggs_refuse_zero_stage_above_0(name, tmp_path):
    with pytest.raises(ValueError, match=rf"agg={name} needs train.zero_stage=0"):
        train.load_config(compose([f"agg={name}", "train.zero_stage=2", f"run.out_dir={tmp_path}"]))
