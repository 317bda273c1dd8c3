"""Data-parallel training and sharded exact search under torchrun, with PyTorch's own engine (torch.distributed,
DistributedDataParallel). Without torchrun every function here is the identity or does nothing, so a plain
`python train.py` runs exactly as before.

    torchrun --nproc_per_node 2 train.py --preset micro       # 2 processes (ranks): gloo on a CPU, nccl on CUDA

What the N ranks do (train.py, encoded.py and report.py call the functions below):
- training (`ddp`, `mine`, `gather`): every rank draws the whole batch from the same seeded generator and computes
  its share, rows rank*B/N .. (rank+1)*B/N; DistributedDataParallel averages the gradients over the ranks, so the
  ranks' models stay equal. A contrastive loss gathers every rank's query and passage embeddings, so that each
  query has the whole batch's passages as negatives, as with one process (Config.gather_negatives). A mean over
  tokens is weighted (`mean_weight`) so that the ranks' average is the whole batch's mean. Then a step on N ranks
  is a step of one process on the whole batch, but for the order of float sums and each rank's dropout stream.
- encoding and teacher scoring (`part`, `gather_rows`, `cat_parts`): each rank takes a contiguous share of the rows;
  the shares are gathered in rank order.
- exact search (`exact_topk`): each rank embeds and searches its share of the corpus; the k-lists are merged.
- files (`RankZeroOutDir`): rank 0 alone writes; every rank waits for it (a barrier) and reads what it wrote, so
  every rank resumes from the same checkpoints. On several machines --out must be a shared file system.

Shapes: N ranks, Q queries, k results, d dims.
"""
import math
import os
import sys

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

import search
from outdir import OutDir


def active():
    """True inside a process group (started by `init` under torchrun)."""
    return tdist.is_available() and tdist.is_initialized()


def rank():
    return tdist.get_rank() if active() else 0


def world():
    return tdist.get_world_size() if active() else 1


def is_main():
    return rank() == 0


def init():
    """Under torchrun (its RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT variables): take this rank's GPU, join the
    process group (nccl on CUDA, gloo on a CPU) and send the stdout of ranks other than 0 to /dev/null (rank 0
    alone logs; errors still reach stderr). Without torchrun: nothing."""
    if "RANK" not in os.environ or active():
        return
    cuda = torch.cuda.is_available()
    if cuda:  # before any CUDA work: torch.device("cuda") (outdir.DEVICE) is then this rank's GPU
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    tdist.init_process_group("nccl" if cuda else "gloo")
    if rank():
        sys.stdout = open(os.devnull, "w")


def close():
    if active():
        tdist.destroy_process_group()


def barrier():
    if active():
        tdist.barrier()


# ----------------------------------------------------------------------------- shares of a batch, of rows

def part(n, r=None):
    """Rank r's (default: this rank's) contiguous share of range(n), as a slice: the shares of ranks 0..N-1 follow
    each other and differ in size by at most one (equal when N divides n)."""
    r, N = rank() if r is None else r, world()
    return slice(n * r // N, n * (r + 1) // N)


def shares(n):
    """The shares part(n, r) of every rank r, in rank order ([slice(0, n)] without torchrun)."""
    return [part(n, r) for r in range(world())]


def mine(x):
    """This rank's share of the rows of x (a tensor, list or tuple of a whole batch); x itself without torchrun."""
    return x[part(len(x))] if active() else x


def gather(x):
    """Every rank's x [n, ...] (equal shapes) in rank order -> [N*n, ...]; x itself without torchrun.

    As DPR and Tevatron do: the other ranks' rows are constants, this rank's rows are x itself, so its gradient
    flows, and here it flows multiplied by N. Each rank then computes the loss of the whole batch from the gathered
    rows (the same value on every rank) but back-propagates only into its own rows; DDP averages the N ranks'
    gradients, so without the factor N the step would take 1/N of the one-process gradient. With it, the average
    is the gradient of the whole batch's loss: sum over the ranks of d loss / d (their rows) (tests/test_dist.py).
    """
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world())]
    tdist.all_gather(parts, x.detach().contiguous())
    if x.requires_grad:
        x = x.view_as(x)  # a node of its own: the hook scales this use of x, not every use of it
        n = world()
        x.register_hook(lambda g: g * n)
    parts[rank()] = x
    return torch.cat(parts)


def mean_weight(n, n_all):
    """Turns a mean over this rank's n items (tokens) into its part of the mean over the batch's n_all, DDP averaging
    the N ranks: n * N / n_all, exactly 1.0 without torchrun. Means over a rank's queries need none (equal shares)."""
    return n * world() / n_all


@torch.no_grad()
def gather_rows(x, n):
    """The shares part(n) of every rank, x [len(part(n)), ...] here, concatenated -> [n, ...] (x without torchrun).
    Shares differ in size by one at most: each is padded to the largest for all_gather, then cut."""
    if not active():
        return x
    size = -(-n // world())
    pad = x.new_zeros((size - len(x), *x.shape[1:]))
    parts = [x.new_empty((size, *x.shape[1:])) for _ in range(world())]
    tdist.all_gather(parts, torch.cat([x, pad]).contiguous())
    return torch.cat([p[:len(range(n)[part(n, r)])] for r, p in enumerate(parts)])


def gather_objects(obj):
    """[every rank's obj] in rank order ([obj] without torchrun): small picklable things (CPU tensors, numbers)."""
    if not active():
        return [obj]
    out = [None] * world()
    tdist.all_gather_object(out, obj)
    return out


def cat_parts(parts):
    """torch.cat of every rank's list of CPU tensors, in rank order (a rank's list may be empty)."""
    if not active():
        return torch.cat(parts)
    return torch.cat([t for ps in gather_objects(parts) for t in ps])


# ----------------------------------------------------------------------------- sharded exact search

def top_of(key, v, Qb, k):
    """The tie-exact top k of each query among pairs key = passage id * Qb + query row with scores v (1-D, not NaN)
    -> (scores [Qb, k], ids [Qb, k]) in the order (score descending, id ascending), padded with -inf / -1 where a
    query has fewer than k pairs. One sort by key (ids ascending within each query), then one stable sort by
    (query, score), the float32 scores through an order-preserving integer image of their bits."""
    o = torch.argsort(key)
    key, v = key[o], v[o] + 0.0                                              # -0.0 -> 0.0: equal scores, equal bits
    b = v.view(torch.int32)
    b = (b ^ ((b >> 31) & 0x7FFFFFFF)).long()                                # increasing with v
    row = key % Qb
    o = torch.argsort(row * (1 << 33) - b, stable=True)                      # query ascending, score descending
    key, v, row = key[o], v[o], row[o]
    counts = torch.bincount(row, minlength=Qb)
    rank = torch.arange(len(key), device=key.device) - (counts.cumsum(0) - counts)[row]
    ok = rank < k
    out_v = torch.full((Qb, k), -math.inf, device=v.device)
    out_i = torch.full((Qb, k), -1, dtype=torch.long, device=v.device)
    out_v[row[ok], rank[ok]], out_i[row[ok], rank[ok]] = v[ok], key[ok] // Qb
    return out_v, out_i


@torch.no_grad()
def exact_topk(q, p, k):
    """search.exact_topk(q, P, k) where P is every rank's p stacked in rank order, each rank holding its own share
    p [N_r, d] (contiguous rows of the corpus, possibly none) and the same queries q [Q, d] -> the same (scores
    [Q, k], ids [Q, k] rows of P) on every rank, equal to the one-process result, ties included.

    Each rank takes the top min(k, N_r) of its share: a passage of the global top-k is in it, the order (score
    descending, row ascending) being the same within a share; the gathered lists are merged by top_of, whose
    order is the same (the scores are exact, so a passage scores alike on every rank and in one process).
    """
    if not active():
        return search.exact_topk(q, p, k)
    sizes = gather_objects(len(p))
    if not 1 <= k <= sum(sizes):
        raise ValueError(f"dist.exact_topk: k = {k} must be in 1..N = {sum(sizes)}")
    ks = [min(k, n) for n in sizes]
    s = torch.full((len(q), k), float("-inf"), device=q.device)                 # [Q, k], the first ks[rank] real
    i = torch.full((len(q), k), -1, dtype=torch.long, device=q.device)
    if ks[rank()]:
        s[:, :ks[rank()]], i[:, :ks[rank()]] = search.exact_topk(q, p, ks[rank()])
        i[:, :ks[rank()]] += sum(sizes[:rank()])                                  # share row -> corpus row
    S, I = [torch.empty_like(s) for _ in sizes], [torch.empty_like(i) for _ in sizes]
    tdist.all_gather(S, s)
    tdist.all_gather(I, i)
    s = torch.cat([S[r][:, :ks[r]] for r in range(len(sizes)) if ks[r]], 1)        # [Q, sum ks] every rank's list
    i = torch.cat([I[r][:, :ks[r]] for r in range(len(sizes)) if ks[r]], 1)
    rows = torch.arange(len(q), device=q.device)[:, None].expand_as(i)
    return top_of((i * len(q) + rows).flatten(), s.flatten(), len(q), k)


# ----------------------------------------------------------------------------- training

class _Step(torch.nn.Module):
    """A model whose forward is one training step: DDP arms its gradient averaging in forward, and the steps of
    train.py call the model's own methods (encode, score, loss), not its forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, step, gen):
        return step(gen)


def ddp(model):
    """The step runner of train.fit: run(step, gen) = step(gen) without torchrun; under it, the step inside
    DistributedDataParallel, which copies rank 0's parameters to every rank now and averages every gradient over
    the ranks in backward. static_graph: the same parameters take part in every step, and some never do (the MLM
    bias of a dual-encoder)."""
    if not active():
        return lambda step, gen: step(gen)
    return DistributedDataParallel(_Step(model), static_graph=True)


def dropout_seed(seed):
    """The seed of this rank's dropout stream: `seed` on rank 0 (and without torchrun), another stream per rank."""
    return seed + (rank() << 32)


# ----------------------------------------------------------------------------- files

def _rng_states():
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []


class RankZeroOutDir(OutDir):
    """OutDir under torchrun: rank 0 alone writes, then every rank waits for it (a barrier) before reading; the
    partial checkpoints hold every rank's random states, so that each rank resumes its own dropout stream. Every
    rank calls every method at the same point of the program (they run the same code on the same files)."""

    def write_text(self, name, text):
        if is_main():
            super().write_text(name, text)
        barrier()

    def save(self, name, obj):
        if is_main():
            super().save(name, obj)
        barrier()

    def save_progress(self, name, model, opt, gen, step, **extra):
        """OutDir.save_progress plus "ranks": [(CPU, CUDA random states)] of every rank, in rank order."""
        super().save_progress(name, model, opt, gen, step, ranks=gather_objects(_rng_states()), **extra)

    def drop(self, name):
        if is_main():
            super().drop(name)
        barrier()

    def tidy(self):
        if is_main():
            super().tidy()
        barrier()

    def remove_if_new(self):
        if is_main():
            super().remove_if_new()
        barrier()

    def resume(self, name, model, opt, gen):
        step, ck = super().resume(name, model, opt, gen)  # rank 0's random states
        ranks = ck.get("ranks")
        if ranks and len(ranks) == world():           # else saved by another number of ranks: rank 0's for all
            torch.set_rng_state(ranks[rank()][0])
            if ranks[rank()][1]:
                torch.cuda.set_rng_state_all(ranks[rank()][1])
        return step, ck

    def finish(self, name, model, out):
        self.save_model(out, model)
        if is_main() and self.exists(f"{name}.partial.pt"):
            os.remove(self.path(f"{name}.partial.pt"))
        barrier()


def outdir(root, makers=None):
    """The output folder (made if absent): an OutDir, or under torchrun a RankZeroOutDir (rank 0 makes it)."""
    if not active():
        return OutDir.create(root, makers)
    out = RankZeroOutDir.create(root, makers) if is_main() else None
    barrier()
    return out or RankZeroOutDir(root, makers)
