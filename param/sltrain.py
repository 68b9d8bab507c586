"""SLTrain: each block projection held as sparse plus low-rank (Han et al., NeurIPS 2024).

    W = (alpha / r) B A + S        B: m x r (init 0), A: r x n (Kaiming-uniform), S: nnz values

S lives on a fixed random support of `nnz = floor(delta m n)` row-major flat positions, drawn once
per layer from a generator seeded by (train.seed, layer name), so every rank draws the same support
without talking. Stored per layer: B, A, the nnz values (trained) and the int32 support (a buffer).
The dense init is thrown away; embeddings, lm_head and norms stay dense.

The matmul goes through `SparseLowRankMatmul`, which saves only (x, B, A, values, support) and
rebuilds W in backward: FLOPs are those of a dense layer, parameters / gradients / optimizer state
are not. `delta = 0` is plain low-rank `W = (alpha / r) B A` (param=lowrank, param/lowrank.py,
with B drawn like A, since B = 0 and no S would hold every block at zero with zero gradients);
it never forms W: x -> x A^T -> (.) B^T.

METHODS.md section 3. Per-size defaults (r, alpha, delta) are in `SIZE_DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import PROJECTION_RANK, is_fake_or_meta, projection_modules, shape_for
from trainer.registry import PARAM
from trainer.strategy import BuildContext, ParamStrategy

# model size -> (rank, alpha, delta); the rank is models.PROJECTION_RANK. 60m..7b: METHODS.md section 3 (the
# paper's). debug and 20m are ours (not in the paper): alpha so that alpha / rank = 0.25 as at 60m.
# fmt: off
ALPHA_DELTA = {"debug": (4.0, 0.03), "20m": (24.0, 0.03), "60m": (32.0, 0.03), "130m": (16.0, 0.03),
               "350m": (16.0, 0.03), "1b": (8.0, 0.03), "7b": (8.0, 0.05)}
# fmt: on
SIZE_DEFAULTS: dict[str, tuple[int, float, float]] = {
    size: (PROJECTION_RANK[size], *ALPHA_DELTA[size]) for size in ALPHA_DELTA
}
B_INITS = ("zero", "kaiming")


@dataclass
class SLTrainConfig:
    """The paper's recipe pairs these with optim.lr=0.003 and weight decay 0 (optim=adamw's defaults)."""

    name: str = "sltrain"
    rank: int | None = None
    """r of B A. None: SIZE_DEFAULTS for model.size (METHODS.md section 3: 128/256/256/512/1024)."""
    alpha: float | None = None
    """Scale numerator, W = (alpha / rank) B A + S. None: SIZE_DEFAULTS (METHODS.md: 32/16/16/8/8)."""
    delta: float | None = None
    """Support density of S, in [0, 1); 0 is plain low-rank. None: SIZE_DEFAULTS (METHODS.md: 0.03, 0.05 at 7b)."""
    b_init: str = "zero"
    """zero: B = 0 (METHODS.md); kaiming: B ~ U(+-1/sqrt(rank)), nn.Linear's default for an out x rank weight.
    With delta = 0 and B = 0 every block projection is 0 and all their gradients are exactly 0 (the blocks
    never train: a bigram model), so that combination is refused."""

    def __post_init__(self):
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"param.rank={self.rank} must be a positive integer")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"param.alpha={self.alpha} must be positive")
        if self.delta is not None and not 0.0 <= self.delta < 1.0:
            raise ValueError(f"param.delta={self.delta} must be in [0, 1) (0: plain low-rank)")
        if self.b_init not in B_INITS:
            raise ValueError(f"param.b_init={self.b_init!r} is unknown; choose one of {', '.join(B_INITS)}")
        if self.delta == 0 and self.b_init == "zero":
            raise ValueError(
                "param.delta=0 with param.b_init=zero leaves every block at zero with zero gradients "
                "(the blocks never train); use param=lowrank or set param.b_init=kaiming"
            )

    def resolved(self, model_size: str) -> SLTrainConfig:
        """A copy with every field left None filled from SIZE_DEFAULTS[model_size]."""
        rank, alpha, delta = SIZE_DEFAULTS.get(model_size, (None, None, None))
        out = dataclasses.replace(
            self,
            rank=self.rank if self.rank is not None else rank,
            alpha=self.alpha if self.alpha is not None else alpha,
            delta=self.delta if self.delta is not None else delta,
        )
        if None in (out.rank, out.alpha, out.delta):
            raise ValueError(
                f"param={self.name} has no defaults for model.size={model_size}; set param.rank, param.alpha "
                f"and param.delta"
            )
        return out

    def check(self, cfg) -> None:
        hidden = shape_for(cfg.model.size).hidden
        rank = self.resolved(cfg.model.size).rank
        if rank >= hidden:
            raise ValueError(f"param.rank={rank} is not below the model's hidden size {hidden}; lower param.rank")


# --- support ---------------------------------------------------------------------------------------
def layer_seed(seed: int, layer_name: str) -> int:
    """A stable 63-bit seed for one layer (Python's hash() is salted per process, so not that)."""
    digest = hashlib.blake2b(f"sltrain:{seed}:{layer_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def draw_support(numel: int, nnz: int, generator: torch.Generator) -> torch.Tensor:
    """`nnz` distinct flat indices in [0, numel), uniformly at random, sorted, int32.

    Sampling with replacement until at least nnz distinct values are seen, then keeping a uniform
    nnz-subset of them, is exactly uniform (by symmetry) and avoids a randperm of all m n positions.
    """
    if numel >= 2**31:
        raise ValueError(f"a projection of {numel} entries does not fit int32 support indices")
    if nnz == 0:
        return torch.empty(0, dtype=torch.int32, device=generator.device)
    on = generator.device  # explicit: under a `with torch.device("cuda")` a factory would default to the GPU
    if 4 * nnz > numel:
        chosen = torch.randperm(numel, generator=generator, device=on)[:nnz]
    else:
        chosen = torch.empty(0, dtype=torch.int64, device=on)
        while chosen.numel() < nnz:
            extra = torch.randint(0, numel, (int(1.1 * (nnz - chosen.numel())) + 64,), generator=generator, device=on)
            chosen = torch.unique(torch.cat([chosen, extra]))
        chosen = chosen[torch.randperm(chosen.numel(), generator=generator, device=on)[:nnz]]
    return chosen.sort().values.to(torch.int32)


# --- the autograd function ------------------------------------------------------------------------
def build_weight(B, A, values, support, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """Dense W = B (scale A) + scatter(values) in `dtype` (a fresh tensor; no autograd)."""
    weight = B.to(dtype) @ (A.to(dtype) * scale)  # m x n
    if values is not None and values.numel():
        weight.view(-1).index_add_(0, support, values.to(dtype))  # support is duplicate-free
    return weight


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    on = x.device.type  # inside autocast: its dtype, as nn.Linear would compute in
    return torch.get_autocast_dtype(on) if torch.is_autocast_enabled(on) else x.dtype


class SparseLowRankMatmul(torch.autograd.Function):
    """y = x W^T with W = B (sA) + scatter(values); saves no dense W (rebuilt in backward).

    Under autocast the matmuls run in the autocast dtype (like nn.Linear); gradients come back in
    each input's own dtype.
    """

    @staticmethod
    def forward(ctx, x, B, A, values, support, scale):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x_c = x.to(dtype)
            y = F.linear(x_c, build_weight(B, A, values, support, scale, dtype))
        ctx.save_for_backward(x_c, B, A, values, support)
        ctx.scale, ctx.dtype, ctx.x_dtype = scale, dtype, x.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x_c, B, A, values, support = ctx.saved_tensors
        scale, dtype = ctx.scale, ctx.dtype
        need_x, need_B, need_A, need_values = ctx.needs_input_grad[:4]
        grad_x = grad_B = grad_A = grad_values = None
        with torch.autocast(grad_y.device.type, enabled=False):
            grad_y = grad_y.to(dtype)
            if need_x:
                weight = build_weight(B, A, values, support, scale, dtype)
                grad_x = (grad_y @ weight).to(ctx.x_dtype)
                del weight  # before G: at most one dense m x n transient at a time
            if need_B or need_A or need_values:
                G = grad_y.reshape(-1, grad_y.shape[-1]).T @ x_c.reshape(-1, x_c.shape[-1])  # m x n
                if need_B:
                    grad_B = (G @ (A.to(dtype) * scale).T).to(B.dtype)
                if need_A:
                    grad_A = ((B.to(dtype).T @ G) * scale).to(A.dtype)
                if need_values and values is not None:
                    grad_values = G.view(-1)[support].to(values.dtype)
        return grad_x, grad_B, grad_A, grad_values, None, None


# --- the layer -------------------------------------------------------------------------------------
class SparseLowRankLinear(nn.Module):
    """A bias-free Linear(in_features -> out_features) held as (alpha / rank) B A + S."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float,
        delta: float,
        seed: int = 0,
        device=None,
        dtype=None,
        b_init: str = "zero",
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha, self.delta, self.scale = rank, alpha, delta, alpha / rank
        nnz = math.floor(delta * in_features * out_features)
        factory = {"device": device, "dtype": dtype}
        self.B = nn.Parameter(torch.zeros(out_features, rank, **factory))
        self.A = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.values = nn.Parameter(torch.empty(nnz, **factory)) if nnz else None
        if is_fake_or_meta(self.A):  # shape-only model (counting, trainer/memory.py): nothing to draw
            support = torch.empty(nnz, dtype=torch.int32, device=self.A.device)
        else:
            g = torch.Generator().manual_seed(seed)
            support = draw_support(in_features * out_features, nnz, g).to(self.A.device)
            with torch.no_grad():
                A = torch.empty(rank, in_features, device="cpu")  # drawn on the CPU generator, wherever the layer lives
                nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=g)  # nn.Linear's default: U(+-1/sqrt(n))
                self.A.copy_(A)
                if self.values is not None:
                    bound = 1 / math.sqrt(in_features)
                    self.values.copy_(torch.empty(nnz, device="cpu").uniform_(-bound, bound, generator=g))
                if b_init == "kaiming":
                    B = torch.empty(out_features, rank, device="cpu")
                    nn.init.kaiming_uniform_(B, a=math.sqrt(5), generator=g)  # U(+-1/sqrt(rank))
                    self.B.copy_(B)
        self.register_buffer("support", support)  # int32 row-major flat indices into W, sorted

    @property
    def nnz(self) -> int:
        return self.support.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.values is None:  # plain low-rank: never form W
            return F.linear(F.linear(x, self.A), self.B) * self.scale
        return SparseLowRankMatmul.apply(x, self.B, self.A, self.values, self.support, self.scale)

    def reference_weight(self) -> torch.Tensor:
        """W through ordinary autograd ops (the tests' dense reference): sBA + scatter(values)."""
        weight = self.scale * (self.B @ self.A)
        if self.values is None:
            return weight
        sparse = torch.zeros(weight.numel(), dtype=weight.dtype, device=weight.device)
        return weight + sparse.scatter(0, self.support.long(), self.values).view_as(weight)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.reference_weight())

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        return build_weight(self.B, self.A, self.values, self.support, self.scale, self.B.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}, nnz={self.nnz}"


# --- the strategy ----------------------------------------------------------------------------------
@PARAM.register("sltrain", SLTrainConfig)
class SLTrain(ParamStrategy):
    def __init__(self, cfg: SLTrainConfig, ctx: BuildContext):
        self.cfg = cfg.resolved(ctx.model_size)
        self.seed = ctx.seed
        self.layers: dict[str, SparseLowRankLinear] = {}

    def convert(self, model: nn.Module) -> None:
        for name, parent, attr, linear in projection_modules(model):
            layer = SparseLowRankLinear(
                linear.in_features,
                linear.out_features,
                self.cfg.rank,
                self.cfg.alpha,
                self.cfg.delta,
                seed=layer_seed(self.seed, name),
                device=linear.weight.device,
                dtype=linear.weight.dtype,
                b_init=self.cfg.b_init,
            )
            setattr(parent, attr, layer)
            self.layers[name] = layer

    def state_dict(self) -> dict:
        # The supports themselves are module buffers: the engine checkpoint holds them.
        return {"rank": self.cfg.rank, "alpha": self.cfg.alpha, "delta": self.cfg.delta}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        for key in ("rank", "alpha", "delta"):
            if state[key] != getattr(self.cfg, key):
                raise ValueError(
                    f"the checkpoint was trained with param.{key}={state[key]}, this run has "
                    f"{getattr(self.cfg, key)}; set param.{key}={state[key]} or start a new run"
                )

    def export_dense(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A plain-LLaMA state dict: each SparseLowRankLinear merged into `<name>.weight`."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for name, module in model.named_modules():
            if isinstance(module, SparseLowRankLinear):
                for key in ("B", "A", "values", "support"):
                    state.pop(f"{name}.{key}", None)
                state[f"{name}.weight"] = module.dense_weight()
        return state
