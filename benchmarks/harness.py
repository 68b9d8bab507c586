"""The harness every benchmark uses: options, any param x optim combination built as train.py builds it (by
registry name), interleaved step timing, tensor bytes, JSON and plots. Processes: benchmarks/processes.py."""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))  # the strategies' packages, however the harness was reached

import agg  # noqa: E402,F401  (registers strategies)
import optim  # noqa: E402,F401
import param  # noqa: E402,F401
from models import Llama, shape_for  # noqa: E402
from trainer.compile import maybe_compile  # noqa: E402
from trainer.config import Config  # noqa: E402
from trainer.metrics import tensor_bytes  # noqa: E402
from trainer.registry import OPTIM, PARAM, config_name  # noqa: E402
from trainer.strategy import BuildContext, ParamStrategy  # noqa: E402

VOCAB = 32000  # the papers' LLaMA tokenizer, for memory figures comparable with theirs
PARAMS = ["full", "sltrain", "lowrank", "sst"]
OPTIMS = ["adamw", "dct_adamw", "galore_adamw", "galore_torch"]


def parser(doc: str, out: str | None, **options) -> argparse.ArgumentParser:
    """A benchmark's parser: where its JSON goes, then `options` as name=default or name=(default, help), typed by
    the default (a list takes one or more, False is a flag; the name's underscores become dashes)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=out, required=out is None, help="results file <results-dir>/<out>.json")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    for name, (default, what) in ((k, v if isinstance(v, tuple) else (v, None)) for k, v in options.items()):
        p.add_argument(f"--{name.replace('_', '-')}", default=default, help=what, **_kind(default))
    return p


def _kind(default) -> dict:
    if default is False:
        return {"action": "store_true"}
    if isinstance(default, list):
        return {"nargs": "+", "type": type(next(iter(default), ""))}
    return {"type": type(default)} if isinstance(default, (int, float)) else {}


def split_overrides(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(options, Hydra overrides after `--`): the overrides go to every combination a benchmark builds."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])


def command(name: str, argv: list[str] | None) -> str:
    """The command line a results file records, with this machine's paths made relative."""
    return relative(" ".join(["python -m benchmarks", name, *(sys.argv[1:] if argv is None else argv)]))


def relative(text: str) -> str:
    """Paths in saved results relative to the repository, so they mean the same on every machine."""
    return text.replace(str(ROOT) + "/", "").replace(str(ROOT.parent) + "/", "../")


def write_json(args, report: dict, show=None, plot=None) -> dict:
    """<out>.json (the report dated in place), then plot(<out>.png) and print(show(report)), if given."""
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{args.out}.json"
    report.setdefault("date", time.strftime("%Y-%m-%d"))
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {relative(str(path))}", flush=True)
    if plot:
        plot(args.results_dir / f"{args.out}.png")
    if show:
        print(show(report))
    return report


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def stacked_bars(ax, labels: list[str], parts: dict[str, list[float]], horizontal: bool = False) -> None:
    """One bar per label, its parts stacked in order (a step's memory: weights, gradients, ...)."""
    base = [0.0] * len(labels)
    for name, vals in parts.items():
        (ax.barh if horizontal else ax.bar)(labels, vals, **{"left" if horizontal else "bottom": base}, label=name)
        base = [a + b for a, b in zip(base, vals)]
    ax.legend(fontsize=8)


Combo = namedtuple("Combo", "label param optim extra")  # one combination: label, registry names, its overrides


def add_combo_args(p: argparse.ArgumentParser) -> None:
    """The combinations to build (--params x --optims, --variant) and where (--device, --bf16)."""
    p.add_argument("--params", nargs="+", default=PARAMS)
    p.add_argument("--optims", nargs="+", default=OPTIMS)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights), as train.py on a GPU")
    p.add_argument("--variant", nargs=2, action="append", default=[], metavar=("LABEL", "OVERRIDES"))  # see combos


def combos(args, overrides: list[str]) -> list[Combo]:
    """--params x --optims, then each --variant: an extra combination, its label ('param+optim' then any words)
    and its overrides; the overrides after `--` go to all of them."""
    out = [Combo(f"{p}+{o}", p, o, list(overrides)) for p, o in itertools.product(args.params, args.optims)]
    for label, extra in args.variant:
        p, o = label.split()[0].split("+")  # "full+dct_adamw T=10": full, dct_adamw
        out.append(Combo(label, p, o, [*overrides, *extra.split()]))
    return out


@dataclass
class Built:
    cfg: Config
    model: nn.Module
    strategy: ParamStrategy
    optimizer: torch.optim.Optimizer | None
    ops: object = None  # the engine's ops for the strategy's step hook (engine_ops), when it has one


def build(size: str, param_name: str, optim_name: str | None, extra=(), vocab=VOCAB, seq_len=256, device="cpu"):
    """Built: the model converted by `param_name`, and (unless None) the `optim_name` optimizer over it."""
    from trainer.cli import compose_config  # not at the top: memory.py's baseline is before Hydra

    cfg = compose_config([f"model.size={size}", f"param={param_name}", f"optim={optim_name or 'adamw'}", *extra])
    ctx = BuildContext(model_size=size, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    with torch.device(device):
        model = Llama(shape_for(size), vocab, seq_len)
        strategy = PARAM.build(config_name(cfg.param), cfg.param, ctx)
        strategy.convert(model)
    maybe_compile(model, cfg.train.compile)  # after the conversion, as train.py
    optimizer = OPTIM.build(config_name(cfg.optim), cfg.optim, model, ctx) if optim_name else None
    return Built(cfg, model, strategy, optimizer)


def make_engine(model, optimizer, cfg, device, aggregator=None):
    """trainer.engine.Engine for one process (the trainer's own engine, never a copy of it)."""
    from launch.env import read_dist_env
    from trainer import dist
    from trainer.engine import Engine
    from trainer.registry import AGG

    dist.init_distributed(read_dist_env(), device)
    aggregator = aggregator or AGG.build(config_name(cfg.agg), cfg.agg, BuildContext(model_size=cfg.model.size))
    return Engine(model=model, optimizer=optimizer, aggregator=aggregator, train=cfg.train, world_size=1, device=device)


def engine_ops(b: Built, device: str = "cpu") -> None:
    """Give a strategy with a step hook the real engine's ops (ZeRO-0), so a timed step runs what train.py runs
    after the optimizer; a strategy without one skips DeepSpeed's start-up."""
    if type(b.strategy).on_step_end is not ParamStrategy.on_step_end:
        b.ops = make_engine(b.model, b.optimizer, b.cfg, torch.device(device)).ops


def state_tensors(value) -> list[torch.Tensor]:
    """Tensors in an optimizer-state entry, including those inside helper objects (galore-torch keeps its
    projection matrix in a projector object, which a plain tensor count would miss)."""
    if torch.is_tensor(value):
        return [value]
    if hasattr(value, "__dict__"):  # a list of them too: galore-torch's two-sided projection holds [P, Q]
        return [t for v in vars(value).values() for t in (v if isinstance(v, list) else [v]) if torch.is_tensor(t)]
    return []


def state_bytes(b: Built, keep=None) -> dict:
    """Bytes held by weights (parameters + buffers), gradients and optimizer state, from the tensors; `keep`
    picks parameters by name (e.g. the block projections only; None: all, and every optimizer-state entry)."""
    params = [p for n, p in b.model.named_parameters() if keep is None or keep(n)]
    state = b.optimizer.state if b.optimizer else {}
    entries = state.values() if keep is None else [state[p] for p in params if p in state]
    return {
        "weights": tensor_bytes([*params, *(t for n, t in b.model.named_buffers() if keep is None or keep(n))]),
        "trainable": tensor_bytes(p for p in params if p.requires_grad),
        "grads": tensor_bytes(p.grad for p in params if p.grad is not None),
        "optim_state": tensor_bytes(t for s in entries for v in s.values() for t in state_tensors(v)),
    }


def train_step(b: Built, tokens: torch.Tensor, step: int = 1, autocast: bool = False) -> float:
    """Forward, backward, optimizer step and (with ops) the strategy's step hook, as train.py's step."""
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = b.model(tokens[:, :-1])
    loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    b.optimizer.step()
    b.optimizer.zero_grad(set_to_none=False)  # keep the gradient buffers: they are part of the memory
    if b.ops is not None:
        b.strategy.on_step_end(step, b.ops)
    sync(tokens.device)
    return float(loss.detach())


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()  # a GPU step is done when its kernels are, not when Python returns


def timed(fn, *args, **kwargs):
    """(fn's result, its wall seconds)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def timed_round_robin(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median seconds of each function, calls interleaved so every one sees the same machine load (the order
    reversed every other round, so none always runs first)."""
    times = {k: [] for k in fns}
    for i in range(repeats):
        for k in list(fns) if i % 2 == 0 else reversed(list(fns)):
            times[k].append(timed(fns[k])[1])
    return {k: statistics.median(v) for k, v in times.items()}
