"""optim.zero=1: each whole matrix's state on one owner rank, against the unsharded optimizer."""

import torch

from optim.lowrank_adam import LowRankAdamW, balanced_owners
from tests.helpers import run_distributed


def test_balanced_owners_is_deterministic_and_balanced():
    sizes = [100, 10, 60, 50, 40, 5, 5]
    owners = balanced_owners(sizes, 2)
    assert owners == balanced_owners(sizes, 2)
    loads = [sum(s for s, o in zip(sizes, owners) if o == r) for r in range(2)]
    assert abs(loads[0] - loads[1]) <= 10
    assert balanced_owners(sizes, 1) == [0] * len(sizes)


def _sharded_worker(rank, world_size, out_dir):
    import torch.distributed as dist

    torch.manual_seed(6)
    shapes = [(12, 8), (8, 12), (16, 16), (6,), (20, 4)]
    full = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    shard = [torch.nn.Parameter(p.detach().clone()) for p in full]

    def make(ps, zero):
        return LowRankAdamW(
            [{"params": ps[3:4]}, {"params": ps[:3] + ps[4:], "projected": True}],
            lr=0.01,
            rank=3,
            update_gap=2,
            error_feedback="fp32",
            zero=zero,
        )

    unsharded, sharded = make(full, 0), make(shard, 1)
    assert sharded.state_is_sharded and sharded.shard_world == world_size
    for step in range(5):
        torch.manual_seed(100 + step)  # the same gradients on every rank, as after DeepSpeed's all-reduce
        for p, t in zip(full, shard):
            g = torch.randn_like(p)
            p.grad, t.grad = g.clone(), g.clone()
        unsharded.step()
        sharded.step()
    assert all(torch.equal(p, t) for p, t in zip(full, shard))
    owned = [t for t in shard if sharded.owner[t] == rank]
    assert set(sharded.state) == set(owned)
    mine = torch.tensor([sum(v.numel() * v.element_size() for s in sharded.state.values() for v in s.values())])
    total = torch.tensor([sum(v.numel() * v.element_size() for s in unsharded.state.values() for v in s.values())])
    gathered = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    assert sum(int(x) for x in gathered) == int(total)
    assert max(int(x) for x in gathered) < 0.7 * int(total)


def test_whole_matrix_sharding_matches_unsharded_in_two_processes(tmp_path):
    run_distributed(_sharded_worker, 2, str(tmp_path))
