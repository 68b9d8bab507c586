"""Export a checkpoint as a Hugging Face LLaMA (default) or a plain dense state dict.

    python -m tools.export runs/my-run/checkpoints/step_0001000 --out my-model      # transformers directory
    python -m tools.export runs/my-run/checkpoints/step_0001000 --format pt         # <checkpoint>/dense.pt

The checkpoint's own config.yaml says which `param` strategy held the weights; that strategy's
`export_dense` merges its layers, and the result is loaded into an unconverted `Llama` (strictly: every
key and shape must match) before it is written. `--format hf` then renames, permutes q/k for
transformers' rotary layout and adds config.json and the run's tokenizer (trainer/hf_export.py);
`--format pt` keeps the project's key names and rotary layout. Weights keep the dtype they were trained
in (bf16 for train.precision=pure_bf16).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

import agg  # noqa: F401  (registers the strategies the run config names)
import optim  # noqa: F401
import param  # noqa: F401
from models import Llama, shape_for
from trainer import checkpoint, hf_export, runfiles
from trainer.config import Config
from trainer.registry import PARAM, config_name
from trainer.strategy import BuildContext


def run_config(ckpt_dir: str) -> Config:
    return runfiles.checkpoint_config(ckpt_dir)


def load_converted(ckpt_dir: str):
    """(model as trained, its param strategy, config) restored from a checkpoint, on the CPU, in fp32."""
    model, strategy, cfg, _ = _load(ckpt_dir)
    return model, strategy, cfg


def _load(ckpt_dir: str):
    weights, states = checkpoint.load_for_export(ckpt_dir)
    cfg = run_config(ckpt_dir)
    model = Llama(shape_for(cfg.model.size), weights["embed.weight"].shape[0], cfg.model.max_seq_len, "sdpa")
    strategy = PARAM.build(
        config_name(cfg.param), cfg.param, BuildContext(model_size=cfg.model.size, seed=cfg.train.seed)
    )
    strategy.convert(model)
    model.load_state_dict(weights)
    strategy.load_state_dict(states.get("param", {}))
    return model, strategy, cfg, weights["embed.weight"].dtype


def export_dense(ckpt_dir: str) -> tuple[dict[str, torch.Tensor], Llama]:
    """The dense state dict (fp32), and a plain Llama holding it (loaded strictly)."""
    dense, plain, _, _ = _export(ckpt_dir)
    return dense, plain


def _export(ckpt_dir: str):
    model, strategy, cfg, dtype = _load(ckpt_dir)
    dense = strategy.export_dense(model)
    plain = Llama(shape_for(cfg.model.size), model.embed.weight.shape[0], cfg.model.max_seq_len, "sdpa")
    plain.load_state_dict(dense, strict=True)
    return dense, plain, cfg, dtype


def write_hf(ckpt_dir: str, out_dir: str, max_shard_bytes: int = hf_export.DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """The checkpoint as a transformers LlamaForCausalLM directory with its tokenizer; returns the file names."""
    dense, plain, cfg, dtype = _export(ckpt_dir)
    tokenizer = runfiles.checkpoint_tokenizer(ckpt_dir, cfg)
    if tokenizer is None:
        raise ValueError(
            f"{ckpt_dir} has no tokenizer.model and the run's tokenizer is gone; copy the run's "
            f"sentencepiece model to {os.path.join(ckpt_dir, runfiles.TOKENIZER)}"
        )
    return hf_export.write_hf(out_dir, dense, plain, tokenizer, dtype, max_shard_bytes)


def parse_bytes(text: str) -> int:
    """'5GB', '200MB', '1000' -> bytes (decimal units, as transformers' max_shard_size)."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    for unit, scale in units.items():
        if text.upper().endswith(unit) and text[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * scale)
    if text.isdigit():
        return int(text)
    raise ValueError(f"--max-shard-size={text!r} is not a size; use e.g. 5GB or 500MB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint directory, e.g. runs/NAME/checkpoints/step_0001000")
    parser.add_argument(
        "--format",
        choices=("hf", "pt"),
        default="hf",
        help="hf: a transformers directory (default); pt: the project's dense state dict",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (hf, default <checkpoint>/hf) or file (pt, default <checkpoint>/dense.pt)",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="hf: split model.safetensors into shards of this size")
    args = parser.parse_args(argv)
    try:
        if args.format == "hf":
            out = args.out or os.path.join(args.checkpoint, "hf")
            files = write_hf(args.checkpoint, out, parse_bytes(args.max_shard_size))
            print(
                f"wrote {out}: {', '.join(files)}\nload it with "
                f"transformers.AutoModelForCausalLM.from_pretrained({out!r})"
            )
            return 0
        dense, _, _, dtype = _export(args.checkpoint)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dense = {k: v.to(dtype) if v.is_floating_point() else v for k, v in dense.items()}
    out = args.out or os.path.join(args.checkpoint, "dense.pt")
    torch.save(dense, out)
    print(f"wrote {out}: {sum(v.numel() for v in dense.values()):,} values in {len(dense)} dense tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
