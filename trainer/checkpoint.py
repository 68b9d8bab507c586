"""Saving and resuming a run: what each rank writes, the barriers between ranks, and which checkpoint to load.

One checkpoint, <run>/checkpoints/step_XXXXXXX/, holds:

- engine/: DeepSpeed's files (Engine.save). engine/mp_rank_00_model_states.pt holds the model's weights
  under "module": the one file export reads (`load_for_export`).
- trainer.pt: rank 0's TrainState (step, tokens seen, each strategy's state_dict()).
- trainer_rankNNNNN.pt: each rank's RNG states, and its shard of an optimizer that shards its own state.
- config.yaml and tokenizer.model (trainer/runfiles.py), and MANIFEST.json: how the folder is staged,
  sealed, verified and pruned is trainer/manifest.py.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from trainer import dist, manifest, runfiles
from trainer.config import Config
from trainer.strategy import shards_own_state

ENGINE_TAG = "engine"  # DeepSpeed writes its files into <checkpoint>/<tag>/
MODEL_FILE = os.path.join(ENGINE_TAG, "mp_rank_00_model_states.pt")  # DeepSpeed's name for model-parallel rank 0


@dataclass
class TrainState:
    """Everything besides the engine that a resumed run needs to continue identically."""

    step: int = 0  # optimizer steps done; also the data position (batches are a function of it)
    tokens_seen: int = 0
    first_val_loss: float | None = None  # at step 0, for the closing summary
    strategies: dict = field(default_factory=dict)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointer:
    """Saves and resumes the run's checkpoints, on every rank together: `engine` is trainer/engine.py's Engine,
    `strategies` the param and agg strategies whose state_dict() rides in trainer.pt, `cfg` the whole run
    config (a checkpoint carries its own config.yaml)."""

    def __init__(
        self,
        *,
        engine,
        cfg: Config,
        run_dir: str,
        vocab_size: int,
        tokenizer_path: str,
        strategies: dict[str, Stateful],
        rank: int,
        world_size: int,
        info: Callable[[str], None] = print,
    ):
        self.engine, self.cfg, self.run_dir, self.strategies = engine, cfg, run_dir, strategies
        self.vocab_size, self.tokenizer_path = vocab_size, tokenizer_path
        self.rank, self.world_size, self.info = rank, world_size, info
        self.root = os.path.join(run_dir, "checkpoints")

    def save(self, state: TrainState) -> None:
        """Every rank writes and hashes its own files; rank 0 seals the checkpoint with their hashes. A full
        disk stops the run with one line, the unfinished folder removed (manifest.saving)."""
        with manifest.saving(self.root, state.step) as tmp:
            self._write(state, tmp)

    def _write(self, state: TrainState, tmp: str) -> None:
        os.makedirs(tmp, exist_ok=True)
        dist.barrier()
        state.strategies = {name: strategy.state_dict() for name, strategy in self.strategies.items()}
        written = self.engine.save(tmp, ENGINE_TAG)
        rank_state = {"rng": rng_state()}
        if shards_own_state(self.engine.client_optimizer):
            # DeepSpeed saves rank 0's copy of the optimizer state, which here holds rank 0's parameters only:
            # each rank writes the state of the parameters it owns into its own file.
            rank_state["optimizer"] = self.engine.client_optimizer.state_dict()
        written[os.path.basename(rank_file(tmp, self.rank))] = manifest.save_object(
            rank_state, rank_file(tmp, self.rank)
        )
        if self.rank == 0:
            written[os.path.basename(shared_file(tmp))] = manifest.save_object(asdict(state), shared_file(tmp))
            runfiles.save_into_checkpoint(tmp, self.run_dir, self.cfg, self.vocab_size, self.tokenizer_path)
        everyone = dist.gather_object(written)  # also the barrier: rank 0 goes on once every rank has written
        if self.rank == 0:
            manifest.publish(self.root, state.step, {k: v for files in everyone for k, v in files.items()})
            manifest.prune(self.root, self.cfg.train.keep_last, newest=state.step)
        dist.barrier()  # no rank goes on before the checkpoint is in place

    def resume(self, path: str | None = None) -> TrainState | None:
        """Load `path` (already verified), else the checkpoint train.resume picks, if any (None: nothing to
        resume). Restores the engine, this rank's optimizer shard and RNG states, and the strategies."""
        if path is None:
            mode = self.cfg.train.verify_checkpoint
            path = find_resume(
                self.root,
                self.cfg.train.resume,
                self.info,
                lambda p: verify_shared(p, mode, self.rank, self.world_size),
            )
            path = dist.broadcast_object(path)  # rank 0's answer, should a rank have seen another folder listing
        if path is None:
            return None
        shared = load_file(shared_file(path))
        rank_state = load_file(rank_file(path, self.rank))
        self.engine.load(path, ENGINE_TAG)
        if "optimizer" in rank_state:  # this rank's shard (see _write)
            self.engine.client_optimizer.load_state_dict(rank_state["optimizer"])
        state = TrainState(**shared)
        for name, strategy in self.strategies.items():
            strategy.load_state_dict(state.strategies.get(name, {}))
        set_rng_state(rank_state["rng"])
        self.info(f"resumed from {path} at step {state.step}")
        return state


def verify_shared(path: str, mode: str, rank: int, world_size: int) -> str | None:
    """train.verify_checkpoint's checks of one checkpoint, as a collective of every rank. Each rank hashes
    every world_size-th chunk, so a `full` check reads the checkpoint once in all rather than once per rank;
    gathering the answers gives every rank the same verdict."""
    problems = dist.all_gather_object(manifest.verify(path, mode, rank, world_size))
    return next((p for p in problems if p), None)


def check_resume_arg(resume: str) -> None:
    """Fail at start-up, before any expensive work, on an explicit checkpoint that cannot be used (the cheap
    `sizes` checks: the full ones run once the processes can share them)."""
    if resume not in ("auto", "never"):
        find_resume("", resume, print, lambda path: manifest.verify(path, "sizes"))


def find_resume(root: str, resume: str, warn, check=manifest.verify) -> str | None:
    """The checkpoint to resume from, per train.resume; `check(path)` says why one cannot be used (or None).
    Every rank may call this with a `check` that shares the work; all then get the same answer."""
    if resume == "never":
        return None
    if resume != "auto":
        problem = check(resume) if os.path.isdir(resume) else "no such directory"
        if problem:
            raise ValueError(
                f"train.resume={resume!r} is not a usable checkpoint: {problem}; pick another or use train.resume=auto"
            )
        return resume
    for _step, path in manifest.list_checkpoints(root):
        problem = check(path)
        if problem is None:
            return path
        warn(f"checkpoint {path} is corrupt ({problem}); falling back to an older one")
    return None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f"trainer_rank{rank:05d}.pt")


def shared_file(directory: str) -> str:
    return os.path.join(directory, "trainer.pt")


def load_file(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a file that passed the manifest but still cannot be read
        raise ValueError(
            f"checkpoint file {path} cannot be read ({type(e).__name__}); resume from another with train.resume=<dir>"
        ) from None


def load_for_export(ckpt_dir: str) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """A verified checkpoint's model weights (as the converted model holds them) and each strategy's state."""
    problem = manifest.verify(ckpt_dir)
    if problem:
        raise ValueError(f"checkpoint {ckpt_dir} is not usable: {problem}")
    weights = load_file(os.path.join(ckpt_dir, MODEL_FILE))["module"]
    return weights, load_file(shared_file(ckpt_dir)).get("strategies", {})
