"""Bad input gets a one-line error naming what to change, before any expensive work."""

import subprocess

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

import train
from tests.helpers import ROOT, compose, train_command, train_env


def run_in_process(tmp_path, overrides):
    raw = compose([f"run.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", *overrides])
    return train.run(raw)


@pytest.mark.parametrize("group", ["param", "optim", "agg"])
def test_unknown_strategy_lists_valid_names(group):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose([f"{group}=nope"])
    assert "nope" in str(err.value) and "Available options" in str(err.value)


def test_unknown_strategy_key(tmp_path):
    message = r"unknown key optim.lrr for optim=adamw \(did you mean optim.lr\?\); valid keys of optim: .*lr"
    with pytest.raises(ValueError, match=message):
        run_in_process(tmp_path, ["+optim.lrr=1"])


def test_registry_name_lists_valid(tmp_path):
    with pytest.raises(ValueError, match=r"unknown param='bogus'; choose one of: .*full"):
        run_in_process(tmp_path, ["param.name=bogus"])


def test_unknown_model_size(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model.size='5m'; choose one of: debug"):
        run_in_process(tmp_path, ["model.size=5m"])


def test_batch_not_divisible(tmp_path):
    with pytest.raises(
        ValueError, match=r"global_batch_size=10 is not divisible by micro_batch_size x world_size = 4 x 1"
    ):
        run_in_process(tmp_path, ["train.global_batch_size=10", "train.micro_batch_size=4"])


def test_seq_len_beyond_model(tmp_path):
    with pytest.raises(ValueError, match=r"data.seq_len=4096 exceeds model.max_seq_len=1024"):
        run_in_process(tmp_path, ["data.seq_len=4096"])


def test_missing_data_file(tmp_path):
    with pytest.raises(ValueError, match=r"data.source=.*no such file or folder"):
        run_in_process(tmp_path, [f"data.source={tmp_path / 'nope.txt'}"])


def test_empty_data_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"is empty; point data.source at a file with text"):
        run_in_process(tmp_path, [f"data.source={empty}"])


def test_missing_tokenizer(tmp_path):
    with pytest.raises(ValueError, match=r"data.tokenizer=.* does not exist"):
        run_in_process(tmp_path, [f"data.tokenizer={tmp_path / 'x.model'}"])


def test_bad_enum_value(tmp_path):
    with pytest.raises(ValueError, match=r"train.zero_stage: 3 is not 0, 1 or 2"):
        run_in_process(tmp_path, ["train.zero_stage=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.verify_checkpoint=sha", r"train.verify_checkpoint: 'sha' is not full, sizes or off"),
        ("train.peak_tflops=-1", r"train.peak_tflops: must be >= 0"),
    ],
)
def test_bad_gpu_path_values(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run_in_process(tmp_path, [override])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["train.save_every=0"],
            r"^train.save_every=0: must be a positive number of steps \(to do it only at the end, set it to "
            r"train.steps\)$",
        ),
        (["train.eval_every=0"], r"^train.eval_every=0: must be a positive"),
        (["train.log_every=-1"], r"^train.log_every=-1: must be a positive"),
        (["train.stop_at=-3"], r"^train.stop_at=-3: must be >= 0"),
        (
            ["train.steps=10", "train.stop_at=11"],
            r"^train.stop_at=11: is past train.steps=10, so it would never stop the run",
        ),
        (["train.eval_batches=-1"], r"^train.eval_batches=-1: must be >= 0 \(0: no evaluation\)"),
        (["train.max_time=-5"], r"^train.max_time=-5.0: must be >= 0"),
        (["train.threads=-1"], r"^train.threads=-1: must be >= 0"),
        (["train.grad_clip=-1"], r"^train.grad_clip=-1.0: must be >= 0"),
        (["train.min_lr_ratio=2"], r"^train.min_lr_ratio=2.0: must be in \[0, 1\]"),
        (["train.micro_batch_size=0"], r"^train.micro_batch_size=0: must be positive"),
        (["model.vocab_size=0"], r"^model.vocab_size=0: must be positive"),
    ],
)
def test_counts_that_would_divide_by_zero_or_never_happen(overrides, message):
    with pytest.raises(ValueError, match=message):
        train.load_config(compose(overrides))


def test_stop_at_the_last_step_and_eval_batches_zero_are_fine():
    cfg = train.load_config(compose(["train.steps=6", "train.stop_at=6", "train.eval_batches=0"]))
    assert cfg.train.stop_at == 6 and cfg.train.eval_batches == 0


def test_cli_prints_one_line_and_exits_2(tmp_path):
    args = [f"run.out_dir={tmp_path}", "train.global_batch_size=10", "train.micro_batch_size=4"]
    proc = subprocess.run(train_command(args), cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "make it a multiple of 4" in errors[0]
    assert "Traceback" not in proc.stderr


def all_group_options():
    from trainer.registry import AGG, OPTIM, PARAM

    for registry in (PARAM, OPTIM, AGG):
        for name in registry.names():
            yield registry.kind, name


@pytest.mark.parametrize("group,name", list(all_group_options()))
def test_every_strategy_composes_and_builds(group, name):
    import torch
    from omegaconf import OmegaConf

    from models import Llama, shape_for
    from trainer.config import resolve
    from trainer.registry import AGG, OPTIM, PARAM, config_name
    from trainer.strategy import BuildContext

    cfg = resolve(OmegaConf.to_object(compose([f"{group}={name}"])))
    assert config_name(getattr(cfg, group)) == name
    ctx = BuildContext(model_size="debug")
    torch.manual_seed(0)
    model = Llama(shape_for("debug"), vocab_size=64, max_seq_len=32)
    PARAM.build(config_name(cfg.param), cfg.param, ctx).convert(model)
    optimizer = OPTIM.build(config_name(cfg.optim), cfg.optim, model, ctx)
    assert all("lr" in g for g in optimizer.param_groups)
    AGG.build(config_name(cfg.agg), cfg.agg, ctx)


@pytest.mark.parametrize("size", ["debug", "20m", "60m", "130m", "350m", "1b", "7b"])
def test_every_model_size_builds_on_meta(size):
    import torch
    from omegaconf import OmegaConf

    from models import Llama, shape_for

    cfg = OmegaConf.to_object(compose([f"model.size={size}"]))
    with torch.device("meta"):
        model = Llama(shape_for(cfg.model.size), vocab_size=32000, max_seq_len=cfg.model.max_seq_len)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_unknown_hub_dataset_fails_fast(tmp_path, monkeypatch):
    from trainer import corpus
    from trainer.config import DataConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ValueError, match=r"data.source='no_such_user/no_such_corpus' is neither a local file nor .*'builtin'"
    ) as e:
        corpus.check_source(DataConfig(source="no_such_user/no_such_corpus"))
    assert "\n" not in str(e.value)
