"""teacher.py: causality, padding invariance, batched score == per-pair loop, cached == uncached generation,
overfitting, loading an MLM encoder, save/load."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from model import Encoder, ModelConfig, pad_batch
from teacher import CrossEncoder, QueryGenerator, sample

V, EOS, TAGS = 40, 8, (9, 10, 11)


def tiny(**kw):
    return ModelConfig(**{"vocab_size": V, "dim": 32, "n_layers": 1, "n_heads": 4, "max_len": 24,
                          "n_dec_layers": 2, "dropout": 0.0, **kw})


def scrambled(model, seed=0):
    """A random model with large weights, so that greedy decoding is not just 'repeat the last token' (what a
    fresh model with tied embeddings does) and near-ties between tokens are rare."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" not in name and "bias" not in name:
                p.normal_(0, 1.0 if p.dim() == 2 and p.size(0) in (V, 24) else 0.3)  # embeddings 1, linears 0.3
    return model.eval()


def passages(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [[6] + torch.randint(12, V, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def targets(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [[TAGS[i % 3]] + torch.randint(12, V, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
            + [EOS] for i in range(n)]


def add_pad_columns(ids, mask, extra):
    B = ids.size(0)
    return torch.cat([ids, torch.zeros(B, extra, dtype=torch.long)], 1), torch.cat(
        [mask, torch.zeros(B, extra, dtype=torch.bool)], 1)


# ---- the decoder --------------------------------------------------------------------------------------------------

def test_decoder_is_causal():
    qg = scrambled(QueryGenerator(tiny()))
    p, pm = pad_batch(passages(2, 1))
    t, tm = pad_batch([[9, 20, 21, 22, 23, 24, 8]] * 2)
    logits = qg.decode(qg.encode(p, pm), pm, t, tm)  # [2, 7, V]
    for pos in range(6):
        t2 = t.clone()
        t2[:, pos + 1 :] = torch.randint(12, V, (2, 6 - pos))
        logits2 = qg.decode(qg.encode(p, pm), pm, t2, tm)
        torch.testing.assert_close(logits2[:, : pos + 1], logits[:, : pos + 1], atol=1e-5, rtol=0)
        assert not torch.allclose(logits2[:, pos + 1 :], logits[:, pos + 1 :])  # later positions do see them


def test_token_logprobs_by_hand_and_padding_invariance():
    qg = scrambled(QueryGenerator(tiny()))
    p, pm = pad_batch(passages(4, 2))
    t, tm = pad_batch(targets(4, 3))
    lp = qg.token_logprobs(qg.encode(p, pm), pm, t, tm)  # [4, T-1]
    ref = F.log_softmax(qg(p, pm, t, tm), -1).gather(-1, t[:, 1:, None]).squeeze(-1) * tm[:, 1:]
    torch.testing.assert_close(lp, ref)
    assert (lp[~tm[:, 1:]] == 0).all() and (lp[tm[:, 1:]] < 0).all()
    p2, pm2 = add_pad_columns(p, pm, 5)
    t2, tm2 = add_pad_columns(t, tm, 4)
    lp2 = qg.token_logprobs(qg.encode(p2, pm2), pm2, t2, tm2)
    torch.testing.assert_close(lp2[:, : lp.size(1)], lp, atol=1e-5, rtol=0)
    assert (lp2[:, lp.size(1) :] == 0).all()
    loss = qg.loss(p, pm, t, tm)  # L_gen = -mean over targets of the mean token log-likelihood
    torch.testing.assert_close(loss, -(lp.sum(1) / tm[:, 1:].sum(1)).mean())
    with torch.no_grad():  # one definition: L_gen = -mean r(q, p+), r as score computes it
        torch.testing.assert_close(loss, -qg.score(p, pm, t, tm, torch.arange(4)[:, None]).mean())


def test_cached_decode_equals_full_decode():
    qg = scrambled(QueryGenerator(tiny()))
    p, pm = pad_batch(passages(3, 4))
    t, tm = pad_batch([[9, 20, 21, 22, 23, 24]] * 3)
    memory = qg.encode(p, pm)
    full = qg.decode(memory, pm, t, tm)
    cache = qg.new_cache()
    steps = [qg.decode(memory, pm, t[:, :2], tm[:, :2], cache)]  # a 2-token prompt, then one token at a time
    steps += [qg.decode(memory, pm, t[:, i : i + 1], tm[:, i : i + 1], cache) for i in range(2, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


# ---- score --------------------------------------------------------------------------------------------------------

def per_pair_scores(qg, p_list, t_list, cand):
    """The slow obvious r(q, p): each pair on its own, no padding, mean log-softmax of the teacher-forced logits."""
    out = torch.zeros(cand.shape)
    for i in range(cand.size(0)):
        for j in range(cand.size(1)):
            p, pm = pad_batch([p_list[int(cand[i, j])]])
            t, tm = pad_batch([t_list[i]])
            lp = F.log_softmax(qg(p, pm, t, tm), -1).gather(-1, t[:, 1:, None])  # [1, T-1, 1]
            out[i, j] = lp.mean()
    return out


@pytest.mark.parametrize("chunk", [None, 5])
def test_batched_score_equals_per_pair_loop(chunk):
    qg = scrambled(QueryGenerator(tiny()))
    p_list, t_list = passages(6, 5), targets(4, 6)
    cand = torch.tensor([[0, 1, 2], [2, 2, 5], [5, 4, 3], [1, 0, 4]])  # repeats and shared passages
    p, pm = pad_batch(p_list)
    t, tm = pad_batch(t_list)
    with torch.no_grad():
        r = qg.score(p, pm, t, tm, cand, chunk=chunk)
        ref = per_pair_scores(qg, p_list, t_list, cand)
        torch.testing.assert_close(r, ref, atol=1e-5, rtol=0)
        p2, pm2 = add_pad_columns(p, pm, 3)
        t2, tm2 = add_pad_columns(t, tm, 2)
        torch.testing.assert_close(qg.score(p2, pm2, t2, tm2, cand, chunk=chunk), r, atol=1e-5, rtol=0)
    assert r[1, 0] == r[1, 1]  # the same pair twice


def test_score_gradient_equals_per_pair_gradient():
    qg = scrambled(QueryGenerator(tiny()))
    p_list, t_list = passages(4, 7), targets(3, 8)
    cand = torch.tensor([[0, 1], [1, 2], [3, 0]])
    weights = torch.randn(3, 2)
    p, pm = pad_batch(p_list)
    t, tm = pad_batch(t_list)
    (qg.score(p, pm, t, tm, cand, chunk=4) * weights).sum().backward()
    fast = {n: x.grad.clone() for n, x in qg.named_parameters() if x.grad is not None}
    qg.zero_grad()
    (per_pair_scores(qg, p_list, t_list, cand) * weights).sum().backward()
    slow = {n: x.grad for n, x in qg.named_parameters() if x.grad is not None}
    assert fast.keys() == slow.keys() and "encoder.mlm_bias" not in fast  # the MLM head is not used here
    for n in fast:
        torch.testing.assert_close(fast[n], slow[n], atol=1e-5, rtol=1e-4, msg=n)
    assert fast["encoder.tok.weight"].abs().sum() > 0 and fast["encoder.blocks.0.mlp.fc.weight"].abs().sum() > 0


# ---- generate -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature,top_k", [(0.0, 0), (1.0, 0), (0.8, 5)])
def test_cached_generation_equals_uncached(temperature, top_k):
    qg = scrambled(QueryGenerator(tiny()))
    p, pm = pad_batch(passages(5, 9))
    lang = torch.tensor([9, 10, 11, 9, 10])
    runs = [qg.generate(p, pm, lang, 12, EOS, temperature, top_k, torch.Generator().manual_seed(3), use_cache=c)
            for c in (True, False)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    ids, mask = runs[0]
    assert len(set(map(tuple, ids.tolist()))) > 1  # not a degenerate model
    assert (ids[~mask] == 0).all() and (ids[mask] != EOS).all() and (ids != 0).eq(mask).all()
    assert (mask[:, 1:] <= mask[:, :-1]).all()  # a prefix per row


def test_generate_follows_teacher_forcing_stops_at_eos_and_top1_is_greedy():
    qg = scrambled(QueryGenerator(tiny()), seed=1)
    p, pm = pad_batch(passages(6, 10))
    lang = torch.tensor([9, 10, 11, 9, 10, 11])
    ids, mask = qg.generate(p, pm, lang, 10, eos_id=-1)  # no EOS: 10 tokens each
    assert ids.shape == (6, 10) and mask.all()
    tgt = torch.cat([lang[:, None], ids], 1)
    with torch.no_grad():
        teacher_forced = qg(p, pm, tgt, torch.ones_like(tgt, dtype=torch.bool)).argmax(-1)  # [6, 10]
    assert torch.equal(teacher_forced, ids)  # greedy: each token is the argmax given the tag and the prefix
    r, stop = next((r, j) for r, row in enumerate(ids.tolist()) for j in range(2, 10) if row[j] not in row[:j])
    eos = int(ids[r, stop])  # a token first written at position >= 2 of row r becomes the EOS
    ids2, mask2 = qg.generate(p, pm, lang, 10, eos_id=eos)
    first = [next((j for j, x in enumerate(row) if x == eos), 10) for row in ids.tolist()]
    assert mask2.sum(1).tolist() == first and first[r] == stop
    assert ids2.size(1) == max(first)
    assert torch.equal(ids2[mask2], ids[:, : ids2.size(1)][mask2])
    top1 = qg.generate(p, pm, lang, 10, -1, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top1[0], ids)


def test_sample_hand_worked():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    assert sample(logits).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, 1.0, top_k=2, generator=g) for _ in range(400)])  # [400, 2]
    assert set(draws[:, 0].tolist()) == {1, 2} and set(draws[:, 1].tolist()) == {0, 2}  # top-2 only
    share = (draws[:, 0] == 1).float().mean().item()  # softmax([3, 1])[0] = 0.881
    assert abs(share - 0.881) < 0.06


def test_pad_is_never_generated():
    qg = scrambled(QueryGenerator(tiny()))
    with torch.no_grad():
        qg.out_bias[0] = 100.0  # pad would win every step
    p, pm = pad_batch(passages(3, 11))
    ids, mask = qg.generate(p, pm, torch.tensor([9, 10, 11]), 6, -1)
    assert mask.all() and (ids != 0).all()


# ---- training, loading, checkpoints -------------------------------------------------------------------------------

def test_query_generator_overfits_and_writes_the_queries():
    torch.manual_seed(0)
    qg = QueryGenerator(tiny(dim=48))
    p_list = passages(4, 12)
    t_list = [[9, 20, 21, 22, EOS], [10, 23, 24, EOS], [11, 25, 26, 27, 28, EOS], [9, 29, EOS]]
    p, pm = pad_batch(p_list)
    t, tm = pad_batch(t_list)
    opt = torch.optim.AdamW(qg.parameters(), lr=3e-3)
    for _ in range(120):
        loss = qg.loss(p, pm, t, tm)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02
    ids, mask = qg.eval().generate(p, pm, t[:, 0], 8, EOS)
    assert [ids[i, mask[i]].tolist() for i in range(4)] == [s[1:-1] for s in t_list]


def test_cross_encoder_overfits_padding_invariant_and_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = tiny(n_layers=2)
    ce = CrossEncoder(cfg)
    ids, mask = pad_batch([[2] + s for s in passages(12, 13)])  # 3 queries x 4 candidates, positive first
    opt = torch.optim.AdamW(ce.parameters(), lr=3e-3)
    for _ in range(60):
        loss = F.cross_entropy(ce(ids, mask).view(3, 4), torch.zeros(3, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01
    ce.eval()
    c = ce(ids, mask)
    assert c.shape == (12,)
    torch.testing.assert_close(ce(*add_pad_columns(ids, mask, 4)), c, atol=1e-5, rtol=0)
    torch.save({"model": ce.state_dict(), "config": dataclasses.asdict(cfg)}, tmp_path / "ce.pt")
    ckpt = torch.load(tmp_path / "ce.pt", weights_only=True)
    ce2 = CrossEncoder(ModelConfig(**ckpt["config"]))
    ce2.load_state_dict(ckpt["model"])
    assert torch.equal(ce2.eval()(ids, mask), c)


def test_query_generator_save_load_round_trip(tmp_path):
    cfg = tiny()
    qg = scrambled(QueryGenerator(cfg))
    assert not any("dec" in k and "tok" in k for k in qg.state_dict())  # tied: one token-embedding tensor
    torch.save({"model": qg.state_dict(), "config": dataclasses.asdict(cfg)}, tmp_path / "qg.pt")
    ckpt = torch.load(tmp_path / "qg.pt", weights_only=True)
    qg2 = QueryGenerator(ModelConfig(**ckpt["config"]))
    qg2.load_state_dict(ckpt["model"])
    qg2.eval()
    p, pm = pad_batch(passages(4, 14))
    t, tm = pad_batch(targets(4, 15))
    cand = torch.tensor([[0, 1], [2, 3], [3, 3], [1, 0]])
    with torch.no_grad():
        assert torch.equal(qg2.score(p, pm, t, tm, cand), qg.score(p, pm, t, tm, cand))
    lang = torch.tensor([9, 10, 11, 9])
    assert all(torch.equal(a, b) for a, b in zip(qg2.generate(p, pm, lang, 8, EOS), qg.generate(p, pm, lang, 8, EOS)))


def test_teachers_start_from_an_mlm_encoder():
    cfg = tiny()
    mlm = scrambled(Encoder(cfg), seed=5)
    p, pm = pad_batch(passages(3, 16))
    t, tm = pad_batch(targets(3, 17))
    qg, ce = scrambled(QueryGenerator(cfg)), scrambled(CrossEncoder(cfg))
    before = qg.decode(qg.encode(p, pm), pm, t, tm)
    qg.load_encoder(mlm.state_dict())
    ce.load_encoder(mlm.state_dict())
    assert torch.equal(qg.encode(p, pm), mlm(p, pm))
    assert torch.equal(ce.encoder(p, pm), mlm(p, pm))
    # the decoder reads the same (now loaded) token embeddings: its input and output layer changed with them
    assert torch.equal(qg.encoder.tok.weight, mlm.tok.weight)
    assert not torch.allclose(qg.decode(qg.encode(p, pm), pm, t, tm), before)
    with pytest.raises(RuntimeError):
        qg.load_encoder(Encoder(tiny(dim=16)).state_dict())


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_blocks_every_repeated_ngram_and_banned_tokens_never_appear(n):
    """A scrambled model with a strong bias towards a few tokens loops on them; with no_repeat = n no n-gram occurs
    twice in a row (a slow count over the output), banned ids never appear, and cached equals uncached."""
    qg = scrambled(QueryGenerator(tiny()))
    with torch.no_grad():
        qg.out_bias[20:23] += 8.0  # a loop-prone generator: three tokens dominate
    p, pm = pad_batch(passages(4, 9))
    lang = torch.tensor([9, 10, 11, 9])
    free, _ = qg.generate(p, pm, lang, 12, eos_id=-1)
    assert any(len(set(r)) < len(r) for r in free.tolist())  # without blocking it repeats itself
    banned = [20, 5, 9]
    ids, mask = qg.generate(p, pm, lang, 12, eos_id=-1, banned=banned, no_repeat=n)
    slow, _ = qg.generate(p, pm, lang, 12, eos_id=-1, banned=banned, no_repeat=n, use_cache=False)
    assert torch.equal(ids, slow)
    for row, m in zip(ids.tolist(), mask.tolist()):
        row = [t for t, k in zip(row, m) if k]
        grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
        assert len(grams) == len(set(grams)) and not set(row) & set(banned)
