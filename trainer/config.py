"""Typed configuration: the schema, and the only place a default lives.

conf/config.yaml only picks the default strategies and Hydra's own settings. `param`, `optim` and `agg`
are Hydra groups whose options are the strategies' config dataclasses (trainer/registry.py stores each
in Hydra's ConfigStore when it registers); a YAML under conf/<group>/ holding `{name: ..., **fields}`
also works. `resolve()` turns each group node into the typed config its registry entry declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainer.precision import MODES as PRECISIONS


def _check(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{path}: {message}")


@dataclass
class ModelConfig:
    size: str = "debug"
    """One of models.LLAMA_SIZES: debug, 20m, 60m, 130m, 350m, 1b, 7b."""
    max_seq_len: int = 1024
    """Longest sequence the rotary tables cover; data.seq_len must not exceed it."""
    vocab_size: int | None = None
    """None: the tokenizer's vocabulary size."""
    attn: str = "auto"
    """auto (flash-attn when installed and on CUDA, else SDPA) | sdpa."""

    def __post_init__(self):
        _check(self.attn in ("auto", "sdpa"), "model.attn", f"{self.attn!r} is not one of auto, sdpa")
        _check(self.max_seq_len > 0, "model.max_seq_len", "must be positive")
        _check(
            self.vocab_size is None or self.vocab_size > 0,
            f"model.vocab_size={self.vocab_size}",
            "must be positive (or null: the tokenizer's size)",
        )


@dataclass
class DataConfig:
    source: str = "builtin"
    """builtin (Python's own documentation, offline) | a local .txt/.jsonl/.json/.parquet file, glob or
    folder | a Hugging Face hub dataset name (needs a network)."""
    text_field: str = "text"
    """Column holding the text in jsonl / parquet / hub sources."""
    text_documents: str = "blank_line"
    """How .txt/.text/.md files split into documents: blank_line (paragraphs: a line holding only whitespace ends a
    document; newlines inside one are kept) | file (each file is one document)."""
    hub_config: str | None = None
    """Subset name for hub datasets (e.g. 'en' for allenai/c4)."""
    streaming: bool = True
    """Stream hub datasets instead of downloading them whole."""
    max_tokens: int = 0
    """Stop tokenizing after this many tokens (0: the whole source)."""
    tokenizer: str | None = None
    """Path to a sentencepiece .model; None trains one on the corpus (cached)."""
    vocab_size: int = 4096
    """Vocabulary of a trained tokenizer."""
    seq_len: int = 128
    val_fraction: float = 0.05
    """Last fraction of the token stream held out for validation."""
    cache_dir: str = "~/.cache/slimtrain"
    """Tokenizers and tokenized corpora, keyed by corpus + tokenizer. Under torchrun on several machines it must
    be on a filesystem they share (or run `python -m trainer.prepare` on each machine first)."""
    num_workers: int = 0
    """Processes that tokenize the corpus (0: one per CPU core)."""
    stream_chunk_tokens: int = 50_000_000
    """A streamed hub source with max_tokens=0 is tokenized in chunks of this many tokens while the run trains
    (trainer/stream.py); the first chunk also holds the validation sequences."""

    def __post_init__(self):
        _check(self.seq_len > 0, "data.seq_len", "must be positive")
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)")
        _check(
            self.vocab_size >= 260, "data.vocab_size", "must be at least 260 (256 byte pieces, unk, bos, eos and more)"
        )
        _check(self.stream_chunk_tokens > 0, "data.stream_chunk_tokens", "must be positive")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0 (0: one per CPU core)")
        _check(
            self.text_documents in ("blank_line", "file"),
            "data.text_documents",
            f"{self.text_documents!r} is not blank_line or file",
        )


@dataclass
class TrainConfig:
    steps: int = 300
    global_batch_size: int = 16
    """Sequences per optimizer step, all ranks together."""
    micro_batch_size: int = 8
    """Sequences per forward pass on one rank; accumulation = global / (micro x world)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0, 1 or 2."""
    precision: str = "auto"
    """auto (amp_bf16 on GPU, fp32 on CPU) | fp32 | amp_bf16 (fp32 weights, bf16 autocast) | pure_bf16 (bf16 weights
    and gradients, no fp32 copy; the optimizer rounds updates stochastically). See trainer/precision.py."""
    activation_checkpointing: str = "none"
    """none | full (recompute every block in backward) | selective (every other block)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this (0: off, the recipe below 7B)."""
    warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.1
    """Cosine decays to this fraction of the peak learning rate."""
    seed: int = 0
    eval_every: int = 100
    """Evaluate every this many steps, and at the last step (> 0; to evaluate only at the end, set it to steps)."""
    eval_batches: int = 8
    """Micro-batches per rank in each evaluation (0: no evaluation)."""
    log_every: int = 10
    """Print a progress line every this many steps (> 0; the metrics file gets every step regardless)."""
    save_every: int = 100
    """Save a checkpoint every this many steps, and at the end or on a stop request (> 0; to save only then,
    set it to steps)."""
    keep_last: int = 2
    """Checkpoints kept on disk (the newest)."""
    resume: str = "auto"
    """auto (newest valid checkpoint of this run, if any) | never | a checkpoint directory."""
    max_time: float = 0.0
    """Stop cleanly (with a checkpoint) after this many seconds (0: no limit)."""
    stop_at: int = 0
    """Stop cleanly (with a checkpoint, exit code 75) after this step, as a preemption would (0: never)."""
    threads: int = 0
    """torch intra-op threads per process (0: leave torch's default)."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda."""
    verify_checkpoint: str = "sizes"
    """What resume checks against the checkpoint's manifest (trainer/manifest.py): sizes (every file there
    with its size: milliseconds) | full (also every byte against its hash: one read of the whole checkpoint,
    shared by the ranks) | off (only that the checkpoint was sealed)."""
    peak_tflops: float = 0.0
    """The accelerator's dense bf16 peak per process, for MFU (0: from the GPU's name in
    trainer/throughput.py; none on a CPU, so no MFU there unless this is set)."""
    compile: bool = False
    """torch.compile each transformer block (trainer/compile.py); the first step compiles (tens of seconds)."""

    def __post_init__(self):
        _check(self.steps > 0, "train.steps", "must be positive")
        _check(self.zero_stage in (0, 1, 2), "train.zero_stage", f"{self.zero_stage} is not 0, 1 or 2")
        if self.precision == "bf16":
            raise ValueError(
                "train.precision=bf16 is ambiguous; use amp_bf16 (fp32 weights, bf16 autocast: the former "
                "bf16) or pure_bf16 (bf16 weights and gradients)"
            )
        _check(
            self.precision in PRECISIONS, "train.precision", f"{self.precision!r} is not one of {', '.join(PRECISIONS)}"
        )
        _check(
            not (self.precision == "pure_bf16" and self.zero_stage > 0),
            "train.precision",
            "pure_bf16 needs train.zero_stage=0 (ZeRO-1/2 keep fp32 master partitions); set train.zero_stage=0",
        )
        _check(
            self.activation_checkpointing in ("none", "full", "selective"),
            "train.activation_checkpointing",
            f"{self.activation_checkpointing!r} is not none, full or selective",
        )
        _check(self.device in ("auto", "cpu", "cuda"), "train.device", f"{self.device!r} is not auto, cpu or cuda")
        _check(self.micro_batch_size > 0, f"train.micro_batch_size={self.micro_batch_size}", "must be positive")
        _check(self.global_batch_size > 0, f"train.global_batch_size={self.global_batch_size}", "must be positive")
        _check(0 <= self.warmup_fraction < 1, "train.warmup_fraction", "must be in [0, 1)")
        _check(self.keep_last >= 1, "train.keep_last", "must be at least 1")
        _check(self.peak_tflops >= 0, "train.peak_tflops", "must be >= 0 (0: look the GPU up)")
        _check(
            self.verify_checkpoint in ("full", "sizes", "off"),
            "train.verify_checkpoint",
            f"{self.verify_checkpoint!r} is not full, sizes or off",
        )
        self._check_counts()

    def _check_counts(self) -> None:
        # 0 is no "off" switch for these: each is a period (step % every), and `steps` already means "only at the end"
        for key in ("save_every", "eval_every", "log_every"):
            value = getattr(self, key)
            _check(
                value > 0,
                f"train.{key}={value}",
                "must be a positive number of steps (to do it only at the end, set it to train.steps)",
            )
        _check(self.eval_batches >= 0, f"train.eval_batches={self.eval_batches}", "must be >= 0 (0: no evaluation)")
        _check(self.stop_at >= 0, f"train.stop_at={self.stop_at}", "must be >= 0 (the step to stop after; 0: never)")
        _check(
            self.stop_at <= self.steps,
            f"train.stop_at={self.stop_at}",
            f"is past train.steps={self.steps}, so it would never stop the run; set it to at most train.steps "
            f"(0: never)",
        )
        _check(self.max_time >= 0, f"train.max_time={self.max_time}", "must be >= 0 (seconds; 0: no limit)")
        _check(self.threads >= 0, f"train.threads={self.threads}", "must be >= 0 (0: torch's default)")
        _check(self.grad_clip >= 0, f"train.grad_clip={self.grad_clip}", "must be >= 0 (0: off)")
        _check(0 <= self.min_lr_ratio <= 1, f"train.min_lr_ratio={self.min_lr_ratio}", "must be in [0, 1]")


@dataclass
class RunConfig:
    name: str = ""
    """Run name; the run directory is out_dir/name. Empty: slurm-<job id> under Slurm, else 'default'."""
    out_dir: str = "runs"


@dataclass
class LogConfig:
    wandb: str = "disabled"
    """online | offline | disabled."""
    wandb_project: str = "slimtrain"
    progress: str = "auto"
    """auto (a bar on a terminal, plain lines otherwise) | bar | lines."""

    def __post_init__(self):
        _check(
            self.wandb in ("online", "offline", "disabled"),
            "log.wandb",
            f"{self.wandb!r} is not online, offline or disabled",
        )
        _check(
            self.progress in ("auto", "bar", "lines"), "log.progress", f"{self.progress!r} is not auto, bar or lines"
        )


@dataclass
class FaultsConfig:
    """Fault injection, for testing robust aggregation: these ranks send corrupt gradients."""

    byzantine_ranks: list[int] = field(default_factory=list)
    attack: str = "sign_flip"
    """sign_flip | gaussian | uniform_random | alie | fall_of_empires | zero | nan."""
    scale: float = 1.0
    """Strength for gaussian / uniform_random (std / half-width)."""
    sign_flip_factor: float = -10.0
    """sign_flip sends this multiple of the worker's own gradient (METHODS.md 5: x -10)."""
    alie_z: float = 0.21
    """alie sends mean - z * std of the honest gradients, per coordinate (METHODS.md 5: z = 0.21)."""
    foe_epsilon: float = 0.1
    """fall_of_empires sends -epsilon times the honest mean (METHODS.md 5: -0.1 mean)."""

    def __post_init__(self):
        attacks = ("sign_flip", "gaussian", "uniform_random", "alie", "fall_of_empires", "zero", "nan")
        _check(self.attack in attacks, "faults.attack", f"{self.attack!r} is not one of {', '.join(attacks)}")
        _check(self.scale >= 0, "faults.scale", "must be >= 0")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    log: LogConfig = field(default_factory=LogConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    param: Any = field(default_factory=lambda: {"name": "full"})
    optim: Any = field(default_factory=lambda: {"name": "adamw"})
    agg: Any = field(default_factory=lambda: {"name": "mean"})


def run_name(cfg: Config) -> str:
    if cfg.run.name:
        return cfg.run.name
    from launch.env import slurm_job_id

    job = slurm_job_id()  # an array task gets its own <array job>_<task>; stable across requeues
    return f"slurm-{job}" if job else "default"


def resolve(cfg: Config) -> Config:
    """Turn the strategy groups into their registered typed configs and run each one's checks
    (trainer/validate.py's strategy part: a bad combination fails as the config is read)."""
    from trainer.registry import AGG, OPTIM, PARAM

    for attr, registry in (("param", PARAM), ("optim", OPTIM), ("agg", AGG)):
        node = getattr(cfg, attr)
        if isinstance(node, dict):
            setattr(cfg, attr, registry.make_config(node))
        elif registry.get(node.name).config_cls is not type(node):  # `param.name=sst` under param=sltrain
            raise ValueError(f"{attr}.name={node.name} does not change the strategy; choose it with {attr}={node.name}")
    from trainer.validate import check_strategies  # validate.py imports this module

    check_strategies(cfg)
    return cfg


def check_world(cfg: Config, world_size: int) -> int:
    """Validate the batch layout for this world size; returns gradient-accumulation steps."""
    per_step = cfg.train.micro_batch_size * world_size
    if cfg.train.global_batch_size % per_step:
        raise ValueError(
            f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by "
            f"micro_batch_size x world_size = {cfg.train.micro_batch_size} x {world_size}; "
            f"make it a multiple of {per_step}"
        )
    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise ValueError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}; "
            f"lower data.seq_len or raise model.max_seq_len"
        )
    return cfg.train.global_batch_size // per_step
