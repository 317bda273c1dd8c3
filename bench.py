"""Speed benchmarks: python bench.py [model|search ...] (no argument runs every section).

Each section prints its figures as ratios measured in one run, so machines compare by ratio, not by seconds.
Speed targets live here and in the issue notes, never in the tests.
"""
import argparse
import os
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn as nn

from model import Encoder, ModelConfig
from teacher import QueryGenerator


def timeit(*fns, repeats=5, warmup=1):
    """Time fns side by side: `warmup` untimed calls each, then `repeats` rounds calling each fn once in turn
    (interleaved, so load from other users hits all of them alike) -> [(min, median) seconds per call] per fn."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
    return [(min(ts), statistics.median(ts)) for ts in times]


def report(name, units, work, ours, ref, goal):
    """One line: both throughputs (work / best time), the ratio of best times (and of medians), the goal."""
    ratio, ratio_med = ref[0] / ours[0], ref[1] / ours[1]
    print(f"{name}: {work / ours[0]:,.0f} vs {work / ref[0]:,.0f} {units}/s = {ratio:.2f}x "
          f"(medians {ratio_med:.2f}x; goal >= {goal}x) {'ok' if ratio >= goal else 'SHORT'}", flush=True)


class RefEncoder(nn.Module):
    """model.Encoder's twin built on torch.nn.TransformerEncoder: same embeddings, pre-LN GELU blocks, final LN."""

    def __init__(self, cfg):
        super().__init__()
        self.tok, self.pos = nn.Embedding(cfg.vocab_size, cfg.dim), nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.n_heads, 4 * cfg.dim, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layers, norm=nn.LayerNorm(cfg.dim), enable_nested_tensor=False)

    def forward(self, ids, mask):
        x = self.drop(self.tok(ids) + self.pos(torch.arange(ids.size(1), device=ids.device)))  # [B, T, C]
        return self.blocks(x, src_key_padding_mask=~mask)


def random_batch(B, T, V, device, lo=4):
    """Token ids [B, T] in [lo, V) with random lengths in [T/2, T] (the first row full), and their mask."""
    lengths = torch.randint(T // 2, T + 1, (B,)).index_fill_(0, torch.tensor([0]), T)
    mask = torch.arange(T)[None] < lengths[:, None]  # [B, T]
    ids = torch.randint(lo, V, (B, T)).masked_fill(~mask, 0)
    return ids.to(device), mask.to(device), lengths


def bench_model(args):
    """Encoder fwd+bwd vs nn.TransformerEncoder, QG batched score vs per-pair loop, cached vs uncached generation."""
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    print(f"device: {torch.cuda.get_device_name() if cuda else f'cpu, {torch.get_num_threads()} threads'}, "
          f"{'bf16 autocast' if cuda else 'fp32'}; throughputs from the best of the repeats, ours first")
    torch.manual_seed(0)

    # 1. Training step (forward, backward, AdamW) of model.Encoder vs torch.nn.TransformerEncoder.
    V = 32000 if cuda else 4000
    sizes = [(128, 2, 64, 32), (256, 4, 128, 8)]  # (dim, layers, T, B): B so that a CPU step takes tens of ms
    if cuda:
        sizes = [(128, 2, 64, 256), (256, 4, 128, 128), (768, 12, 256, 32)]
    for dim, L, T, B in sizes:
        cfg = ModelConfig(vocab_size=V, dim=dim, n_layers=L, n_heads=max(4, dim // 64), max_len=T, dropout=0.1)
        ids, mask, _ = random_batch(B, T, V, dev)
        steps = []
        for model in (Encoder(cfg), RefEncoder(cfg)):
            model.to(dev).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(model=model, opt=opt):
                with amp:
                    loss = model(ids, mask).float().square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            steps.append(step)
        ours, ref = timeit(*steps, repeats=10, warmup=2)
        report(f"encoder train step d{dim}/L{L}/T{T}/B{B} vs nn.TransformerEncoder", "tokens", B * T, ours, ref, 1.0)

    # 2. QueryGenerator.score: each passage encoded once, one decoder pass over Q*k pairs vs a per-pair loop.
    cfg = ModelConfig(vocab_size=V, max_len=128, dropout=0.0)
    qg = QueryGenerator(cfg).to(dev).eval()
    Q, k, N, Tp, T = 16, 16, 64, 96, 24
    p_ids, p_mask, p_len = random_batch(N, Tp, V, dev)
    tgt, tgt_mask, t_len = random_batch(Q, T, V, dev)
    cand = torch.rand(Q, N).argsort(1)[:, :k].to(dev)  # [Q, k] distinct passages per query

    def batched(chunk=None):
        with torch.no_grad(), amp:
            return qg.score(p_ids, p_mask, tgt, tgt_mask, cand, chunk=chunk)

    def loop():  # each pair alone, unpadded: encode the passage, decode the query, mean token log-likelihood
        r = torch.zeros(Q, k, device=dev)
        with torch.no_grad(), amp:
            for i in range(Q):
                t = tgt[i : i + 1, : t_len[i]]
                for j, c in enumerate(cand[i].tolist()):
                    p = p_ids[c : c + 1, : p_len[c]]
                    m = torch.ones_like(p, dtype=torch.bool)
                    r[i, j] = qg.token_logprobs(qg.encode(p, m), m, t, torch.ones_like(t, dtype=torch.bool)).mean()
        return r

    diff = (batched() - loop()).abs().max().item()
    ours, chunked, ref = timeit(batched, lambda: batched(chunk=32), loop, repeats=5)
    report(f"QG score Q{Q} x k{k} of N{N}, Tp{Tp}, T{T} vs per-pair loop", "pairs", Q * k, ours, ref, 5.0)
    report("  the same with score(chunk=32)", "pairs", Q * k, chunked, ref, 5.0)
    print(f"  max |batched - loop| = {diff:.2e}")

    # 3. QueryGenerator.generate with the key/value cache vs recomputing the whole prefix at every step.
    B, new = 32, 32
    lang = torch.full((B,), 5, dtype=torch.long, device=dev)
    gen = [lambda c=c: qg.generate(p_ids[:B], p_mask[:B], lang, new, eos_id=-1, use_cache=c) for c in (True, False)]
    with amp:
        same = all(torch.equal(a, b) for a, b in zip(gen[0](), gen[1]()))
        ours, ref = timeit(*gen, repeats=5)
    report(f"QG generate B{B}, {new} new tokens, cached vs uncached", "tokens", B * new, ours, ref, 3.0)
    print(f"  identical outputs: {same}")


def _search_data(N, d, Q, seed=0):
    """Random float32 queries [Q, d] and passages [N, d] (the same for the same arguments)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(Q, d, generator=g), torch.randn(N, d, generator=g)


def _search_mib(field):
    """This process's VmRSS or VmHWM (peak RSS) in MiB, from /proc/self/status (Linux); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def _search_peak(method, N, d, Q, k, threads, queue):
    """Run in a fresh process: the extra peak memory (MiB) of one search, VmHWM after minus VmRSS before (the peak
    is reset to the current RSS first, through /proc/self/clear_refs). faiss's counts the copy its index makes."""
    import search
    torch.set_num_threads(threads)
    q, p = _search_data(N, d, Q)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        queue.put(None)
        return
    base = _search_mib("VmRSS")
    if method == "faiss":
        import faiss
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(d)
        index.add(p.numpy())
        index.search(q.numpy(), k)
    else:
        search.exact_topk(q, p, k, precision=method)
    queue.put(_search_mib("VmHWM") - base)


def _search_peak_mib(method, N, d, Q, k, threads):
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_search_peak, args=(method, N, d, Q, k, threads, queue))
    proc.start()
    peak = queue.get()
    proc.join()
    return peak


def _search_agree(q, p, ids, ref_ids):
    """(rows with identical ids, rows whose ids differ only among near-tied passages): a row whose sorted float64
    scores of both id lists agree to 1e-5 relative differs only by float32 rounding of the scores."""
    same = (ids == ref_ids).all(1)
    near = 0
    for r in (~same).nonzero().flatten().tolist():
        a = (p[ids[r]].double() @ q[r].double()).sort().values
        b = (p[ref_ids[r]].double() @ q[r].double()).sort().values
        near += bool(((a - b).abs() <= 1e-5 * b.abs().max()).all())
    return int(same.sum()), near


def bench_search(args):
    """exact_topk with a bf16 and with a float32 first pass vs faiss IndexFlatIP (when installed): Q = 1000, k = 100,
    N in {100k, 1M} x d in {128, 768}. The methods alternate within each round (load from other users hits all
    alike); per method the min / median seconds, then ours / faiss as a ratio of medians and of minimums (goals at
    d 128: bf16 <= 0.8 at 1M, <= 1.0 at 100k), and the extra peak memory of one search in a fresh process (faiss's
    includes its index copy of the passages). The load average before and after says how busy the machine was."""
    import search
    try:
        import faiss
        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        faiss = None
    Q, k = 1000, 100
    auto = "bf16" if search._bf16_is_fast(torch.device("cpu")) else "fp32"
    print(f"exact_topk (bf16 / fp32 first pass; auto picks {auto} here) vs "
          f"{'faiss IndexFlatIP' if faiss else 'nothing (faiss not installed)'}: Q = {Q}, k = {k}, "
          f"CPU {torch.get_num_threads()} threads; min / median seconds over interleaved rounds", flush=True)
    search.exact_topk(*_search_data(2000, 16, 64), 10, precision="bf16")  # first-call setup outside the timings
    for N in (100_000, 1_000_000):
        for d in (128, 768):
            q, p = _search_data(N, d, Q)
            fns = {m: (lambda m=m: search.exact_topk(q, p, k, precision=m)) for m in ("bf16", "fp32")}
            if faiss:
                index = faiss.IndexFlatIP(d)
                index.add(p.numpy())
                fns["faiss"] = lambda: index.search(q.numpy(), k)
            rounds = 5 if N * d <= 10 ** 8 else 3
            times, out, load = {m: [] for m in fns}, {}, [os.getloadavg()[0]]
            for _ in range(rounds):
                for m, fn in fns.items():
                    t0 = time.perf_counter()
                    out[m] = fn()
                    times[m].append(time.perf_counter() - t0)
            load.append(os.getloadavg()[0])
            fns = index = None  # free faiss's copy of the passages before the fresh processes below
            same = all(torch.equal(a, b) for a, b in zip(out["bf16"], out["fp32"]))
            print(f"N {N:>9,} d {d:>3}, {rounds} rounds, load {load[0]:.1f} -> {load[1]:.1f}, "
                  f"bf16 and fp32 results identical: {same}", flush=True)
            for m in times:
                peak = _search_peak_mib(m, N, d, Q, k, args.threads)
                line = (f"  {m:>5}: {min(times[m]):7.3f} / {statistics.median(times[m]):7.3f} s, "
                        f"{Q / statistics.median(times[m]):8,.0f} q/s, {'n/a' if peak is None else f'+{peak:.0f}'} MiB")
                if faiss and m != "faiss":
                    line += (f" | / faiss: {statistics.median(times[m]) / statistics.median(times['faiss']):.2f} "
                             f"(medians), {min(times[m]) / min(times['faiss']):.2f} (minimums)")
                print(line, flush=True)
            if faiss:
                same, near = _search_agree(q, p, out["bf16"][1], torch.from_numpy(out["faiss"][1]))
                print(f"  ids equal to faiss's in {same}/{Q} rows, {near} more differ only among near-ties "
                      f"(faiss ranks by float32 matmul scores, exact_topk by exact ones)", flush=True)
            if torch.cuda.is_available():  # untested: no GPU was at hand when this was written
                qc, pc = q.cuda(), p.cuda()
                qb, pb = qc.bfloat16(), pc.bfloat16()
                fns = {"exact_topk": lambda: search.exact_topk(qc, pc, k), "bf16 matmul": lambda: pb @ qb.T}
                ts = {m: [] for m in fns}
                for _ in range(rounds + 1):  # the first round warms up
                    for m, fn in fns.items():
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        res = fn()
                        torch.cuda.synchronize()
                        ts[m].append(time.perf_counter() - t0)
                        if m == "exact_topk":
                            s, i = res
                        del res
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                search.exact_topk(qc, pc, k)
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                same = torch.equal(s.cpu(), out["bf16"][0]) and torch.equal(i.cpu(), out["bf16"][1])
                t, mm = statistics.median(ts["exact_topk"][1:]), statistics.median(ts["bf16 matmul"][1:])
                print(f"  cuda: {min(ts['exact_topk'][1:]) * 1e3:.1f} / {t * 1e3:.1f} ms, {Q / t:,.0f} q/s, "
                      f"+{peak:.0f} MiB | the bf16 matmul alone ({N} x {Q} scores): {mm * 1e3:.1f} ms, "
                      f"exact_topk / matmul {t / mm:.2f} (goal at 1M x 128: <= 2) | equal to the CPU's: {same}",
                      flush=True)
                del qc, pc, qb, pb


SECTIONS = {"model": bench_model, "search": bench_search}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sections", nargs="*", help=f"sections to run, any of {list(SECTIONS)} (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section {unknown[0]!r}; choose from {list(SECTIONS)}")
    torch.set_num_threads(args.threads)
    for name in args.sections or SECTIONS:
        print(f"== {name}", flush=True)
        SECTIONS[name](args)
