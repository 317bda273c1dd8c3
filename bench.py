"""Speed benchmarks: python bench.py [model|search ...] (no argument runs every section).

Each section prints its figures as ratios measured in one run, so machines compare by ratio, not by seconds.
Speed targets live here and in the issue notes, never in the tests.
"""
import argparse

import torch


def bench_model(args):
    """Encoder fwd+bwd vs nn.TransformerEncoder, QG batched score vs per-pair loop, cached vs uncached generation."""
    raise NotImplementedError("model section: issue 4")


def bench_search(args):
    """exact_topk time, throughput and peak memory over a sweep of N and d (faiss side by side when installed)."""
    raise NotImplementedError("search section: issue 6")


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
