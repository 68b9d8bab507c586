"""Every start-up check in one place: `validate(cfg, world_size)` runs them before any file is written.

Each check raises a one-line ValueError naming the key or file to change (train.py prints it as `error: ...` and
exits 2). They run cheapest first and in the order a user fixes things: the strategies' combinations, the batch
layout for this world size, the data source, the model size, the resume argument, then the run directory on disk
and the logger. The strategies take part through their config dataclasses (trainer/strategy.py):
`needs_zero_stage_0()`, `check(cfg)` and `check_world(world_size)`, each optional.

`resolve()` (trainer/config.py) runs the strategy part as it types the groups, so a bad combination fails as the
config is read, also for the tools that never reach `validate` (the memory estimator, which models one process
and so skips the world-size checks but the batch layout's).
"""

from __future__ import annotations

import os

from models import shape_for
from trainer import corpus, lock, preflight, runfiles
from trainer.config import Config, check_world, run_name
from trainer.strategy import NeedsZeroStage0

STRATEGY_GROUPS = ("param", "optim", "agg")


def validate(cfg: Config, world_size: int) -> str:
    """The checks that need no model and no data, before any file is written; returns the run directory."""
    check_strategies(cfg)
    check_world(cfg, world_size)
    check_workers(cfg, world_size)
    corpus.check_source(cfg.data)
    shape_for(cfg.model.size)  # an unknown model.size, before the corpus is read
    from trainer import checkpoint  # here: it imports DeepSpeed, whose import prints; resolve() needs none of it

    checkpoint.check_resume_arg(cfg.train.resume)
    run_dir = os.path.join(cfg.run.out_dir, run_name(cfg))
    preflight.check_folders(cfg, run_dir)
    lock.check_free(run_dir)  # a run that holds the directory is named before its files are read
    runfiles.check_resume(run_dir, cfg)  # resumes with the checkpoint's tokenizer
    preflight.check_wandb(cfg.log)
    return run_dir


def check_strategies(cfg: Config) -> None:
    """Each strategy in turn (param, optim, agg): what ZeRO-1/2 would break, then its own `check(cfg)`."""
    for attr in STRATEGY_GROUPS:
        node = getattr(cfg, attr)
        needs = getattr(node, "needs_zero_stage_0", None)
        need = needs() if needs is not None else None
        if need is not None and cfg.train.zero_stage > 0:
            raise ValueError(zero_stage_refusal(need, cfg.train.zero_stage))
        check = getattr(node, "check", None)
        if check is not None:
            check(cfg)


def zero_stage_refusal(need: NeedsZeroStage0, zero_stage: int) -> str:
    """The one form of every "needs train.zero_stage=0" refusal."""
    return (
        f"{need.setting} needs {need.what}, but train.zero_stage={zero_stage} {need.why}; "
        f"use train.zero_stage=0{need.fix}"
    )


def check_workers(cfg: Config, world_size: int) -> None:
    """Each strategy's `check_world(world_size)`, where it has one: e.g. an aggregator whose math needs more
    workers than the run has (the memory estimator models one process and skips it)."""
    for attr in STRATEGY_GROUPS:
        check = getattr(getattr(cfg, attr), "check_world", None)
        if check is not None:
            check(world_size)
