"""Pretrain a LLaMA model: compose config -> build model -> apply strategies -> engine -> fit.

    python train.py                                   # the embedded default (debug model, CPU)
    torchrun --nproc_per_node=2 train.py train.zero_stage=1 param=sltrain optim=dct_adamw
    python train.py -m param=full,sltrain train.steps=5   # a sweep: one run directory per job

Exit codes: 0 done, 2 bad input (one `error:` line), 75 stopped cleanly to be resumed, 1 anything else;
a sweep exits with its first failed job's code.
"""

from __future__ import annotations

import os
import sys
import traceback

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import agg  # noqa: F401  (registers the agg strategies)
import optim  # noqa: F401  (registers the optim strategies)
import param  # noqa: F401  (registers the param strategies)
from launch.env import DistEnv, read_dist_env
from models import Llama, apply_activation_checkpointing, shape_for
from trainer import cli, data, diskfull, dist, lock, precision, preflight, rundir, runfiles, signals
from trainer.checkpoint import Checkpointer
from trainer.compile import maybe_compile
from trainer.config import Config, resolve, run_name
from trainer.engine import Engine
from trainer.loop import Trainer
from trainer.metrics import MetricsLog
from trainer.registry import AGG, OPTIM, PARAM, config_name
from trainer.schema import check_keys
from trainer.strategy import BuildContext
from trainer.validate import validate

ConfigStore.instance().store(name="schema", node=Config)  # the strategy groups: trainer/registry.py
JOBS = cli.JobLog()


def load_config(raw: DictConfig) -> Config:
    check_keys(raw)  # `+train.setps=5` reaches here; to_object would drop or keep it silently
    return resolve(OmegaConf.to_object(raw))


def write_resolved_config(cfg: Config, run_dir: str) -> dict:
    """runs/NAME/config.yaml with every default filled in (SLTrain's per-size rank, not null)."""
    resolved = runfiles.resolved_config(cfg, cfg.model.vocab_size)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return resolved


def build_model(cfg: Config, vocab_size: int) -> Llama:
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    return Llama(shape_for(cfg.model.size), cfg.model.vocab_size or vocab_size, cfg.model.max_seq_len, cfg.model.attn)


def run(raw: DictConfig) -> int:
    cfg = load_config(raw)
    env = read_dist_env()
    run_dir = validate(cfg, env.world_size)  # every start-up check, before any file is written
    device = dist.pick_device(cfg, env)
    dist.set_threads(cfg.train.threads)
    dist.init_distributed(env, device)
    # One run per directory, from here to exit (also the exit-75 stop); a full disk anywhere is one line.
    with lock.hold(run_dir, env.is_main, dist.broadcast_object), diskfull.stops_the_run(run_dir, "training"):
        resume_from = rundir.claim(run_dir, cfg, env.rank, env.world_size)  # moves an earlier run aside
        # before the run directory is made: a bad corpus leaves it as it was (claim set a resumed run's tokenizer)
        corpus_data = data.prepare(cfg.data, env.is_main, dist.barrier)
        preflight.check_vocab(cfg, corpus_data.vocab_size)
        return build_and_fit(cfg, env, device, run_dir, resume_from, corpus_data)


def build_parts(cfg: Config, env: DistEnv, device: torch.device, vocab_size: int) -> tuple:
    """The model converted by the param strategy, then the optimizer and aggregator, all built by name."""
    model = build_model(cfg, vocab_size)
    ctx = BuildContext(model_size=cfg.model.size, rank=env.rank, world_size=env.world_size, seed=cfg.train.seed)
    param_strategy = PARAM.build(config_name(cfg.param), cfg.param, ctx)
    param_strategy.convert(model)
    apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
    precision.prepare_model(model, precision.resolve(cfg.train.precision, device.type))
    model.to(device)
    maybe_compile(model, cfg.train.compile)
    optimizer = OPTIM.build(config_name(cfg.optim), cfg.optim, model, ctx)
    aggregator = AGG.build(config_name(cfg.agg), cfg.agg, ctx)
    if cfg.faults.byzantine_ranks:
        from agg.faults import FaultInjector

        aggregator = FaultInjector(aggregator, cfg.faults, ctx)
    return model, param_strategy, optimizer, aggregator


def make_trainer(
    cfg: Config,
    env: DistEnv,
    engine: Engine,
    param_strategy,
    aggregator,
    corpus_data: data.Corpus,
    run_dir: str,
    log: MetricsLog,
) -> Trainer:
    checkpointer = Checkpointer(
        engine=engine,
        cfg=cfg,
        run_dir=run_dir,
        vocab_size=corpus_data.vocab_size,
        tokenizer_path=corpus_data.tokenizer_path,
        strategies={"param": param_strategy, "agg": aggregator},
        rank=env.rank,
        world_size=env.world_size,
        info=log.info,
    )
    return Trainer(
        train=cfg.train,
        seq_len=cfg.data.seq_len,
        engine=engine,
        param=param_strategy,
        data=corpus_data,
        checkpointer=checkpointer,
        log=log,
        rank=env.rank,
        world_size=env.world_size,
    )


def build_and_fit(
    cfg: Config, env: DistEnv, device: torch.device, run_dir: str, resume_from: str | None, corpus_data: data.Corpus
) -> int:
    """Build everything and fit, in a run directory this process holds (`run`)."""
    os.makedirs(run_dir, exist_ok=True)
    resolved = write_resolved_config(cfg, run_dir) if env.is_main else {}
    if env.is_main:
        runfiles.keep_tokenizer(run_dir, corpus_data.tokenizer_path)
        signals.clear_preempted(run_dir)
    model, param_strategy, optimizer, aggregator = build_parts(cfg, env, device, corpus_data.vocab_size)
    engine = Engine(
        model=model,
        optimizer=optimizer,
        aggregator=aggregator,
        train=cfg.train,
        world_size=env.world_size,
        device=device,
    )
    log = MetricsLog(run_dir, cfg.log, env.is_main, cfg.train.steps, resolved, run_name(cfg))
    log.info(
        f"run {run_dir}: {cfg.model.size} model, param={config_name(cfg.param)} optim={config_name(cfg.optim)} "
        f"agg={config_name(cfg.agg)}, {env.world_size} process(es) on {device}, ZeRO-{cfg.train.zero_stage}"
    )
    try:
        trainer = make_trainer(cfg, env, engine, param_strategy, aggregator, corpus_data, run_dir, log)
        code = trainer.fit(resume_from)
        if code == signals.EXIT_PREEMPTED:  # torchrun reports 75 as 1: say "resume me" in files too
            signals.announce_preempted(run_dir, env.is_main, trainer.state.step)
        return code
    finally:
        log.close()
        dist.destroy()


def run_job(raw: DictConfig) -> int:
    """One run, as an exit code: a ValueError is the user's mistake (one line, 2), anything else a bug (its
    traceback, 1). It returns rather than exits so that a `-m` sweep goes on to its next job."""
    try:
        return run(raw)
    except ValueError as e:
        cli.print_error(cli.error_line(e))
        return 2
    except Exception:
        traceback.print_exc()
        return 1


# conf/ beside this file, also when train.main() is called from an import (Hydra resolves a relative
# config_path against the calling module then, which finds no `conf` package).
@hydra.main(
    version_base="1.3",
    config_path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf"),
    config_name="config",
)
def hydra_task(raw: DictConfig) -> int:
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # each job its own run directory
        raw.run.name = cli.sweep_run_name(run_name(raw), list(hc.overrides.task), JOBS.swept, hc.job.num)
    code = run_job(raw)
    JOBS.add(run_name(raw), code)
    return code


def main() -> None:
    global JOBS
    JOBS = cli.JobLog(swept=cli.swept_keys(cli.argv_overrides(sys.argv[1:])))
    with cli.one_line_errors(), dist.one_process_group():
        hydra_task()
    if len(JOBS.jobs) > 1 and read_dist_env().is_main:
        print(JOBS.summary(), flush=True)
    sys.exit(JOBS.exit_code())


if __name__ == "__main__":
    main()
