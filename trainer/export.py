"""Export a checkpoint as a plain dense LLaMA state dict (each converted layer merged back by its strategy).

    python -m trainer.export runs/my-run/checkpoints/step_0001000 [--out dense.pt]

The run's config.yaml (next to checkpoints/) says which `param` strategy held the weights; that
strategy's `export_dense` merges its layers, and the result is loaded into an unconverted `Llama`
(strictly: every key and shape must match) before it is written.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from omegaconf import OmegaConf

import agg  # noqa: F401  (registers the strategies the run config names)
import optim  # noqa: F401
import param  # noqa: F401
from models import Llama, shape_for
from trainer import checkpoint
from trainer.config import Config, resolve
from trainer.registry import PARAM, config_name
from trainer.strategy import BuildContext

MODEL_FILE = os.path.join("engine", "mp_rank_00_model_states.pt")


def run_config(ckpt_dir: str) -> Config:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir))), "config.yaml")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: export expects a checkpoint inside a run directory (run/checkpoints/step_N)")
    merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    return resolve(OmegaConf.to_object(merged))


def load_converted(ckpt_dir: str):
    """(model as trained, its param strategy, config) restored from a checkpoint, on the CPU."""
    problem = checkpoint.verify(ckpt_dir)
    if problem:
        raise ValueError(f"checkpoint {ckpt_dir} is not usable: {problem}")
    cfg = run_config(ckpt_dir)
    weights = checkpoint.load_file(os.path.join(ckpt_dir, MODEL_FILE))["module"]
    shared = checkpoint.load_file(checkpoint.shared_file(ckpt_dir))
    model = Llama(shape_for(cfg.model.size), weights["embed.weight"].shape[0], cfg.model.max_seq_len, "sdpa")
    strategy = PARAM.build(config_name(cfg.param), cfg.param, BuildContext(model_size=cfg.model.size, seed=cfg.train.seed))
    strategy.convert(model)
    model.load_state_dict(weights)
    strategy.load_state_dict(shared.get("strategies", {}).get("param", {}))
    return model, strategy, cfg


def export_dense(ckpt_dir: str) -> tuple[dict[str, torch.Tensor], Llama]:
    """The dense state dict, and a plain Llama holding it (loaded strictly)."""
    model, strategy, cfg = load_converted(ckpt_dir)
    dense = strategy.export_dense(model)
    plain = Llama(shape_for(cfg.model.size), model.embed.weight.shape[0], cfg.model.max_seq_len, "sdpa")
    plain.load_state_dict(dense, strict=True)
    return dense, plain


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint directory, e.g. runs/NAME/checkpoints/step_0001000")
    parser.add_argument("--out", default=None, help="output file (default: <checkpoint>/dense.pt)")
    args = parser.parse_args(argv)
    try:
        dense, _ = export_dense(args.checkpoint)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.checkpoint, "dense.pt")
    torch.save(dense, out)
    print(f"wrote {out}: {sum(v.numel() for v in dense.values()):,} values in {len(dense)} dense tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
