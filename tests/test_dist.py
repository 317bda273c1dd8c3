"""dist.py and train.py under torchrun, on a CPU with gloo, 2 processes on 127.0.0.1 (one thread each):
sharded exact search equal to search.exact_topk (ties included), the gathered contrastive gradient equal to the
one-process one, DE steps on 2 ranks equal to 1 process, the micro pipeline on 2 ranks writing what 1 process
writes, and a killed 2-rank run resuming to the weights of an uninterrupted one."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import dist
import losses
import search
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"} if os.path.exists("/sys/class/net/lo") else {}
FAST = ["--preset", "micro", "--threads", "1", "--log-every", "60", "--mlm-steps", "4", "--denoise-steps", "2",
        "--de-steps", "6", "--qg-steps", "2", "--rank-steps", "2", "--ce-steps", "2", "--kd-steps", "2",
        "--ckpt-every", "2", "--kd-written", "1"]  # written distillation rows too: each rank takes its share of both


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(out, name):
    return torch.load(os.path.join(out, name), weights_only=True)["model"]


# ----------------------------------------------------------------------------- in 2 processes spawned here

def search_cases():
    """(q, p, k): ties everywhere (entries in {-1, 0, 1}), duplicate passages on both sides of the shard boundary,
    k above a share's size, shares large enough for search.py's threshold path, k = N, a corpus of one passage
    (rank 0's share is empty)."""
    g = torch.Generator().manual_seed(0)
    ints = lambda *shape: torch.randint(-1, 2, shape, generator=g).float()  # noqa: E731
    dup = ints(40, 4)
    dup[20:30] = dup[5:15]                                 # rows 5..14 again as 20..29, across the boundary at 20
    return [(ints(6, 4), ints(101, 4), 10), (ints(5, 4), dup, 7), (ints(3, 3), ints(9, 3), 8),
            (ints(4, 6), ints(2000, 6), 5), (torch.randn(4, 8, generator=g), torch.randn(33, 8, generator=g), 33),
            (ints(2, 3), ints(1, 3), 1)]


def ddp_gradient(B=8, M=12, C=5):
    """One step of a linear encoder, under DDP with the gathered contrastive loss -> the weight's gradient."""
    g = torch.Generator().manual_seed(1)
    xq, xp, target = torch.randn(B, C, generator=g), torch.randn(M, C, generator=g), torch.arange(B)
    torch.manual_seed(2)
    enc = torch.nn.Linear(C, C)

    def step(gen):
        q, p = dist.gather(enc(dist.mine(xq))), dist.gather(enc(dist.mine(xp)))           # [B, C], [M, C]
        return losses.contrastive_loss(q @ p.T, target)[0], {}
    run = dist.ddp(enc)  # kept alive until backward: DDP averages the gradients there
    run(step, None)[0].backward()
    return enc.weight.grad.clone()


def worker(rank, port, out, micro):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), **LOOPBACK)
    torch.set_num_threads(1)
    dist.init()
    found = {"search": [dist.exact_topk(q, p[dist.part(len(p))], k) for q, p, k in search_cases()],
             "rows": dist.gather_rows(torch.arange(5.0)[dist.part(5)].view(-1, 1) * 10, 5),
             "parts": dist.cat_parts([torch.tensor([rank, rank])] * (rank + 1)),
             "grad": ddp_gradient()}
    torch.save(found, os.path.join(out, f"rank{rank}.pt"))
    # a few DE steps, without dropout, on 2 ranks (ends the process group)
    assert train.main(["--data", micro, "--out", os.path.join(out, "de"), "--stages", "pretrain,de", *FAST,
                       "--mlm-steps", "0", "--denoise-steps", "0", "--dropout", "0", "--de-steps", "3"]) == 0


@pytest.fixture(scope="module")
def spawned(micro, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("spawned"))
    mp.spawn(worker, args=(free_port(), out, micro), nprocs=2)
    return out, [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=True) for r in range(2)]


def test_top_of_hand_worked():
    """Pairs key = id * Qb + row in any order: per query the k best by (score descending, id ascending); -0.0 ties
    with 0.0; a query with fewer than k pairs is padded with -inf / -1."""
    Qb = 3
    pairs = [(7, 0, 1.0), (2, 0, 5.0), (4, 0, 1.0), (9, 0, -2.0), (1, 0, 1.0),   # (id, row, score)
             (5, 1, -0.0), (3, 1, 0.0), (8, 1, -1e-30), (6, 1, 2.5)]
    key = torch.tensor([i * Qb + r for i, r, _ in pairs])
    s, i = dist.top_of(key, torch.tensor([v for _, _, v in pairs]), Qb, 4)
    assert i.tolist() == [[2, 1, 4, 7], [6, 3, 5, 8], [-1, -1, -1, -1]]
    assert s[0].tolist() == [5.0, 1.0, 1.0, 1.0] and s[1, 0] == 2.5 and s[2].eq(-math.inf).all()


def test_sharded_search_equals_exact_topk(spawned):
    for r in range(2):
        for (q, p, k), (s, i) in zip(search_cases(), spawned[1][r]["search"]):
            want_s, want_i = search.exact_topk(q, p, k)
            assert torch.equal(i, want_i) and torch.equal(s, want_s)


def test_gathers_in_rank_order(spawned):
    for r in range(2):  # rows 0-1 from rank 0 and 2-4 from rank 1; parts [0, 0] from rank 0, [1, 1] twice from 1
        assert spawned[1][r]["rows"].flatten().tolist() == [0, 10, 20, 30, 40]
        assert spawned[1][r]["parts"].tolist() == [0, 0, 1, 1, 1, 1]


def test_gathered_contrastive_gradient_equals_one_process(spawned):
    """DDP averages the 2 ranks' gradients; dist.gather's factor N makes that the whole batch's gradient (without
    it, each would hold only its own rows' part: half of it)."""
    want = ddp_gradient()  # no process group here: one process, the whole batch
    for r in range(2):
        assert torch.allclose(spawned[1][r]["grad"], want, rtol=1e-5, atol=1e-7)


def test_de_steps_on_2_ranks_equal_1_process(spawned, micro, tmp_path):
    """Global batch 16: 8 queries per rank, every rank's passages as negatives. Not bit for bit: the 2 ranks sum
    the gradients of their halves, and every matmul and softmax runs in another order or shape; AdamW turns the
    noise on parameters whose true gradient is 0 (the key bias) into updates of up to ~1e-5 here (measured 6e-6)
    against 1.25e-3 for the largest. Each rank with its own negatives (--gather-negatives false) differs by 2e-3.
    The first batch holds 4 other positives of rank 0's queries among rank 1's passages: masked, as with 1 process,
    because every rank draws the whole batch and so knows every rank's candidates.
    AdamW and the clipping hardly see a gradient's scale: test_gathered_contrastive_gradient_equals_one_process
    checks it."""
    out = str(tmp_path / "one")
    assert train.main(["--data", micro, "--out", out, "--stages", "pretrain,de", *FAST, "--mlm-steps", "0",
                       "--denoise-steps", "0", "--dropout", "0", "--de-steps", "3"]) == 0
    one, two = (weights(d, "de_bm25.pt") for d in (out, os.path.join(spawned[0], "de")))
    init = weights(out, "pretrain.pt")
    assert not torch.equal(one["encoder.tok.weight"], init["tok.weight"])  # it trained
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 5e-5


# ----------------------------------------------------------------------------- the pipeline under torchrun

def torchrun(micro, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "train.py", "--data", micro, "--out", out, *FAST]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **LOOPBACK}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def two_ranks(micro, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("two"))
    log = torchrun(micro, out).communicate()[0]
    assert "time per stage" in log, log
    return out


def test_pipeline_on_2_ranks_writes_what_1_process_writes(two_ranks, micro, tmp_path):
    out = str(tmp_path / "one")
    assert train.main(["--data", micro, "--out", out, *FAST]) == 0
    files = lambda d: sorted(os.listdir(d)) + sorted(os.listdir(os.path.join(d, "runs")))  # noqa: E731
    assert files(two_ranks) == files(out)
    assert not [f for f in files(two_ranks) if f.endswith((".tmp", ".partial.pt"))]
    one, two = (json.load(open(os.path.join(d, "results.json"))) for d in (out, two_ranks))
    assert one["systems"].keys() == two["systems"].keys() and one["systems"]["bm25"] == two["systems"]["bm25"]


def test_killed_run_resumes_to_the_uninterrupted_weights(two_ranks, micro, tmp_path):
    """SIGTERM to torchrun (it stops both ranks) once de_bm25's step-2 checkpoint exists; the same command again
    resumes there, each rank with its own dropout stream, and ends with the uninterrupted run's weights."""
    out = str(tmp_path / "killed")
    job = torchrun(micro, out)
    while not os.path.exists(os.path.join(out, "de_bm25.partial.pt")) and job.poll() is None:
        time.sleep(0.01)
    job.send_signal(signal.SIGTERM)
    job.communicate()
    assert not os.path.exists(os.path.join(out, "de.pt"))
    log = torchrun(micro, out).communicate()[0]
    assert "[de_bm25] resuming at step" in log and "time per stage" in log, log
    for name in ("de_bm25.pt", "de.pt", "qg.pt", "ce.pt", "qg_kd_align.pt", "drdecr.pt"):
        a, b = weights(out, name), weights(two_ranks, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (out, two_ranks))
    assert a == b


def test_batch_not_divisible_by_the_ranks_is_a_one_line_error(micro, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dist, "world", lambda: 3)
    assert train.main(["--data", micro, "--out", str(tmp_path / "out"), *FAST]) == 1  # --batch 16
    assert capsys.readouterr().err.strip() == ("error: --batch 16 and --rank-batch 4 must be multiples of the 3 "
                                               "processes of torchrun (each takes an equal share of a batch)")
    assert not os.path.exists(tmp_path / "out")
