"""Pretrain a LLaMA model: compose config -> build model -> apply strategies -> engine -> fit.

    python train.py                                   # the embedded default (debug model, CPU)
    torchrun --nproc_per_node=2 train.py train.zero_stage=1 param=sltrain optim=dct_adamw
"""
from __future__ import annotations

import os
import sys

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

import agg  # noqa: F401  (registers the agg strategies)
import optim  # noqa: F401  (registers the optim strategies)
import param  # noqa: F401  (registers the param strategies)
from launch.env import read_dist_env
from models import Llama, apply_activation_checkpointing, shape_for
from trainer import checkpoint, corpus, data, engine as eng, precision, preflight, runfiles, signals
from trainer.compile import maybe_compile
from trainer.config import Config, check_workers, check_world, resolve, run_name
from trainer.loop import Trainer
from trainer.metrics import MetricsLog
from trainer.registry import AGG, OPTIM, PARAM, config_name
from trainer.strategy import BuildContext

ConfigStore.instance().store(name="schema", node=Config)


def load_config(raw: DictConfig) -> Config:
    return resolve(OmegaConf.to_object(raw))


def write_resolved_config(raw: DictConfig, run_dir: str) -> dict:
    resolved = OmegaConf.to_container(raw, resolve=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(resolved))
    return resolved


def build_model(cfg: Config, vocab_size: int) -> Llama:
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    return Llama(shape_for(cfg.model.size), cfg.model.vocab_size or vocab_size, cfg.model.max_seq_len, cfg.model.attn)


def check_inputs(cfg: Config, world_size: int) -> str:
    """The checks that need no model and no data, before any file is written; returns the run directory."""
    check_world(cfg, world_size)
    check_workers(cfg, world_size)
    corpus.check_source(cfg.data)
    shape_for(cfg.model.size)
    checkpoint.check_resume_arg(cfg.train.resume)
    run_dir = os.path.join(cfg.run.out_dir, run_name(cfg))
    runfiles.check_resume(run_dir, cfg)  # resumes with the checkpoint's tokenizer
    preflight.check_folders(cfg, run_dir)
    preflight.check_wandb(cfg.log)
    return run_dir


def run(raw: DictConfig) -> int:
    cfg = load_config(raw)
    env = read_dist_env()
    run_dir = check_inputs(cfg, env.world_size)
    device = eng.pick_device(cfg, env)
    eng.set_threads(cfg.train.threads)
    eng.init_distributed(env, device)
    corpus_data = data.prepare(cfg.data, env.is_main, eng.barrier)  # before the run directory: a bad corpus leaves it as it was
    preflight.check_vocab(cfg, corpus_data.vocab_size)
    os.makedirs(run_dir, exist_ok=True)
    resolved = write_resolved_config(raw, run_dir) if env.is_main else {}
    if env.is_main:
        runfiles.keep_tokenizer(run_dir, corpus_data.tokenizer_path)
        signals.clear_preempted(run_dir)
    model = build_model(cfg, corpus_data.vocab_size)
    ctx = BuildContext(model_size=cfg.model.size, rank=env.rank, world_size=env.world_size, seed=cfg.train.seed,
                       zero_stage=cfg.train.zero_stage, total_steps=cfg.train.steps, device=device)
    param_strategy = PARAM.build(config_name(cfg.param), cfg.param, ctx)
    param_strategy.convert(model)
    apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
    precision.prepare_model(model, precision.resolve(cfg.train.precision, device.type))
    model.to(device)
    maybe_compile(model, cfg.train.compile)
    optimizer = OPTIM.build(config_name(cfg.optim), cfg.optim, model, ctx)
    aggregator = AGG.build(config_name(cfg.agg), cfg.agg, ctx)
    if cfg.faults.byzantine_ranks:
        from trainer.faults import FaultInjector

        aggregator = FaultInjector(aggregator, cfg.faults, ctx)
    engine = eng.Engine(model, optimizer, cfg, env.world_size, device)
    log = MetricsLog(run_dir, cfg.log, env.is_main, cfg.train.steps, resolved, run_name(cfg))
    log.info(f"run {run_dir}: {cfg.model.size} model, param={config_name(cfg.param)} optim={config_name(cfg.optim)} "
             f"agg={config_name(cfg.agg)}, {env.world_size} process(es) on {device}, ZeRO-{cfg.train.zero_stage}")
    try:
        trainer = Trainer(cfg, engine, param_strategy, aggregator, corpus_data, env.rank, env.world_size, run_dir, log)
        code = trainer.fit()
        if code == signals.EXIT_PREEMPTED:  # torchrun reports 75 as 1: say "resume me" in files too
            signals.announce_preempted(run_dir, env.is_main, trainer.state.step)
        return code
    finally:
        log.close()
        eng.destroy()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(raw: DictConfig) -> None:
    try:
        code = run(raw)
    except ValueError as e:
        code = report_error(str(e))
    sys.exit(code)


def report_error(message: str) -> int:
    """One line on stderr, from the main rank only (under torchrun every rank fails the same check); exit code 2."""
    if read_dist_env().is_main:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    main()
