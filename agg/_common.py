"""Machinery shared by the robust aggregators (METHODS.md section 5): moving gradient buckets between
ranks, telling faulty workers apart, and the config fields every robust aggregator has.

Each rank ends up with one `(p, len)` matrix per bucket of the flattened gradient, row i = worker i:

- `sharded` (the collective form): an all-to-all leaves rank r holding coordinate shard r of every
  worker's bucket; per-worker statistics (the p x p Gram, NaN counts) are all-reduced, so every rank
  derives identical coefficients; each rank forms its shard of the aggregate and an all-gather rebuilds
  the vector. Sent per rank: (p-1)/p n (all-to-all) + (p-1)/p n (all-gather), one ring all-reduce's worth.
- `allgather` (the reference): every rank gathers every worker's whole bucket, (p-1) n sent per rank,
  and computes everything locally; no other collective.

Buckets bound the send/receive buffers; the received rows are kept until the aggregate is formed
(one gradient's worth per rank in sharded mode, p of them in allgather mode).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.strategy import Aggregator, BuildContext, NeedsZeroStage0

MODES = ("sharded", "allgather")


@dataclass
class RobustConfig:
    """Fields shared by every robust aggregator (subclasses set `name` and add their own)."""

    name: str = ""
    mode: str = "sharded"
    """sharded (all-to-all of coordinate shards + all-reduced statistics + all-gather; METHODS.md 5's
    collective form) | allgather (every rank gathers all p gradients; the reference)."""
    bucket_numel: int = 1 << 22
    """Gradient coordinates exchanged per collective call (bounds the communication buffers)."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"agg.mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.bucket_numel < 1:
            raise ValueError("agg.bucket_numel: must be at least 1")

    def min_workers(self) -> tuple[int, str]:
        """The fewest workers this aggregator's math works with, and why (subclasses with more needs override)."""
        return 2, "it combines several workers' gradients; one process has nothing to combine"

    def check_world(self, world_size: int) -> None:
        """At start-up (trainer.validate.check_workers): refuse a world too small for the aggregate to mean anything."""
        need, why = self.min_workers()
        if world_size < need:
            raise ValueError(
                f"agg={self.name} needs at least {need} workers ({why}), this run has {world_size}; "
                f"run {need} or more processes (torchrun --nproc_per_node={need}) or use agg=mean"
            )

    def needs_zero_stage_0(self) -> NeedsZeroStage0:
        return NeedsZeroStage0(
            f"agg={self.name}",
            "reduces gradients inside backward, so no rank holds its own full gradient",
            fix=" or agg=mean",
        )


# --- flat views of a list of gradient tensors ------------------------------------------------------
def read_range(grads: list[torch.Tensor], start: int, stop: int) -> torch.Tensor:
    """Coordinates [start, stop) of the concatenated flattened gradients, as a new fp32 vector."""
    pieces, offset = [], 0
    for g in grads:
        n = g.numel()
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            pieces.append(g.reshape(-1)[lo - offset : hi - offset].float())
        offset += n
    return torch.cat(pieces) if pieces else torch.zeros(0)


def write_range(grads: list[torch.Tensor], start: int, stop: int, values: torch.Tensor) -> None:
    offset = 0
    for g in grads:
        n = g.numel()
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            g.view(-1)[lo - offset : hi - offset].copy_(values[lo - start : hi - start])
        offset += n


def bucket_ranges(total: int, bucket_numel: int) -> list[tuple[int, int]]:
    return [(a, min(a + bucket_numel, total)) for a in range(0, total, bucket_numel)]


# --- the exchange ---------------------------------------------------------------------------------
class Exchange:
    """Moves gradient buckets between ranks; counts the bytes this rank sends (ring algorithms)."""

    def __init__(self, mode: str, bucket_numel: int, group, world_size: int, rank: int):
        self.mode, self.bucket_numel, self.group = mode, bucket_numel, group
        self.p, self.rank = world_size, rank
        self.bytes_sent = 0
        self.ranges: list[tuple[int, int]] = []  # the buckets of the last scatter
        self.valid: list[int] = []  # per bucket, how many of this rank's shard coordinates are real (not padding)

    @property
    def sharded(self) -> bool:
        return self.mode == "sharded" and self.p > 1

    def scatter(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """One (p, len) fp32 matrix per bucket; row i holds worker i's coordinates (this rank's shard)."""
        total = sum(g.numel() for g in grads)
        self.ranges, self.valid, rows = bucket_ranges(total, self.bucket_numel), [], []
        for start, stop in self.ranges:
            flat, length = read_range(grads, start, stop), stop - start
            if self.p == 1:
                rows.append(flat[None])
                self.valid.append(length)
            elif self.sharded:
                shard = math.ceil(length / self.p)
                padded = torch.nn.functional.pad(flat, (0, shard * self.p - length))
                out = torch.empty_like(padded)
                dist.all_to_all_single(out, padded, group=self.group)
                rows.append(out.view(self.p, shard))
                self.valid.append(max(0, min(shard, length - self.rank * shard)))
                self.bytes_sent += (self.p - 1) * shard * 4
            else:
                out = torch.empty(self.p * length, dtype=flat.dtype, device=flat.device)
                dist.all_gather_single(out, flat, group=self.group)
                rows.append(out.view(self.p, length))
                self.valid.append(length)
                self.bytes_sent += (self.p - 1) * length * 4
        return rows

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a per-shard statistic over ranks (sharded mode only: otherwise each rank saw everything)."""
        if self.sharded:
            dist.all_reduce(t, group=self.group)
            self.bytes_sent += 2 * (self.p - 1) * t.numel() * t.element_size() // self.p
        return t

    def gather(self, grads: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        """Write the aggregate back into `grads`; `outs[b]` is this rank's part of bucket b."""
        for (start, stop), out in zip(self.ranges, outs):
            if self.sharded:
                full = torch.empty(self.p * out.numel(), dtype=out.dtype, device=out.device)
                dist.all_gather_single(full, out.contiguous(), group=self.group)
                self.bytes_sent += (self.p - 1) * out.numel() * 4
                out = full
            write_range(grads, start, stop, out[: stop - start])


# --- the common aggregate() -----------------------------------------------------------------------
def worker_stats(rows: list[torch.Tensor], p: int, with_gram: bool) -> torch.Tensor:
    """[per worker, the number of buckets holding a NaN/Inf (p), then the p x p Gram row-major if asked],
    float64, this shard's part. A NaN/Inf anywhere in a row makes the row's sum non-finite (cheaper than
    isfinite on every value); a faulty row's Gram entries are NaN and masked out by the caller."""
    stats = torch.zeros(p + (p * p if with_gram else 0), dtype=torch.float64, device=rows[0].device if rows else None)
    for r in rows:
        stats[:p] += (~torch.isfinite(r.sum(dim=1))).double()
        if with_gram:
            r64 = r.double()
            stats[p:] += (r64 @ r64.T).reshape(-1)
    return stats


class RobustAggregator(Aggregator):
    """Exchange buckets, find faulty workers (any NaN/Inf), let the subclass combine, write back.

    Subclasses implement `combine(rows, gram, good) -> (outs, metrics)`; `gram` is the p x p Gram of
    the good workers' full gradients (float64) when `needs_gram`, `good` a bool mask over workers.
    """

    uses_engine_allreduce = False
    needs_gram = False

    def __init__(self, cfg: RobustConfig, ctx: BuildContext):
        self.cfg, self.p, self.rank = cfg, ctx.world_size, ctx.rank
        self.exchange = Exchange(cfg.mode, cfg.bucket_numel, ctx.group, ctx.world_size, ctx.rank)

    def aggregate(self, grads: list[torch.Tensor], step: int) -> dict[str, float]:
        start, self.exchange.bytes_sent = time.perf_counter(), 0
        rows = self.exchange.scatter(grads)
        outs, metrics = self.reduce_rows(rows)
        self.exchange.gather(grads, outs)
        return {**metrics, "agg/bytes_sent": float(self.exchange.bytes_sent), "agg/time_s": time.perf_counter() - start}

    def reduce_rows(self, rows: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, float]]:
        """This rank's part of the aggregate, one vector per bucket of `rows` (see `combine`)."""
        stats = self.exchange.all_reduce(
            worker_stats(rows, self.p, self.needs_gram)
        ).cpu()  # p x p math runs on the CPU
        good = stats[: self.p] == 0
        gram = None
        if self.needs_gram:
            gram = torch.where(good[:, None] & good[None, :], stats[self.p :].view(self.p, self.p), 0.0)
        outs, metrics = self.combine(rows, gram, good)
        return outs, {**metrics, "agg/faulty_workers": float((~good).sum())}

    def aggregate_matrix(self, matrix: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The aggregate of a whole (p, n) matrix of workers' gradients on one process, no communication
        (what `allgather` mode computes on every rank; for tests and benchmarks)."""
        self.exchange.ranges, self.exchange.valid = [(0, matrix.shape[1])], [matrix.shape[1]]
        saved, self.exchange.mode = self.exchange.mode, "allgather"
        try:
            outs, metrics = self.reduce_rows([matrix])
        finally:
            self.exchange.mode = saved
        return outs[0], metrics

    def combine(self, rows, gram, good):
        raise NotImplementedError

    def total_valid(self) -> int:
        """Coordinates of the whole gradient (every rank's shards together)."""
        return self.exchange.ranges[-1][1] if self.exchange.ranges else 0


def linear_combination(rows: list[torch.Tensor], coef: torch.Tensor, good: torch.Tensor) -> list[torch.Tensor]:
    """Per bucket, sum_i coef[i] * rows[i] over the good workers (faulty rows may hold NaN: skipped)."""
    idx = good.nonzero().flatten()
    return [coef[idx].to(r) @ r[idx.to(r.device)] if len(idx) else r.new_zeros(r.shape[1]) for r in rows]


def per_worker(prefix: str, values: torch.Tensor) -> dict[str, float]:
    return {f"agg/{prefix}_rank{i}": float(v) for i, v in enumerate(values)}


class CoordinatewiseAggregator(RobustAggregator):
    """Per coordinate: sort the good workers' values and average the sorted positions [lo, hi)."""

    def kept_range(self, q: int) -> tuple[int, int]:
        """Sorted positions kept when q workers are good."""
        raise NotImplementedError

    def combine(self, rows, gram, good):
        idx = good.nonzero().flatten()
        counts = torch.zeros(self.p, dtype=torch.float64, device=rows[0].device)
        if len(idx) == 0:
            return [r.new_zeros(r.shape[1]) for r in rows], per_worker("weight", counts)
        idx = idx.to(counts.device)
        lo, hi = self.kept_range(len(idx))
        outs = []
        for r, n in zip(rows, self.exchange.valid):
            values, order = torch.sort(r[idx], dim=0, stable=True)
            outs.append(values[lo:hi].mean(dim=0))
            counts[idx] += torch.bincount(order[lo:hi, :n].reshape(-1), minlength=len(idx)).double()
        counts = self.exchange.all_reduce(counts).cpu()
        # weight = the fraction of coordinates where this worker's value enters the aggregate
        return outs, per_worker("weight", counts / max(1, self.total_valid()))
