"""model.py: masks, attention against a slow reference, padding invariance, pooling, overfitting, save/load."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from model import Attention, DualEncoder, Encoder, ModelConfig, attention_mask, pad_batch

V = 40


def tiny(**kw):
    return ModelConfig(**{"vocab_size": V, "dim": 32, "n_layers": 2, "n_heads": 4, "max_len": 24, **kw})


def random_seqs(n, lo, hi, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [[5] + torch.randint(9, V, (L - 1,), generator=g).tolist() for L in lengths]


def add_pad_columns(ids, mask, extra, pad_id=0):
    """The same batch with `extra` more padding columns on the right."""
    B = ids.size(0)
    return (torch.cat([ids, torch.full((B, extra), pad_id)], 1), torch.cat([mask, torch.zeros(B, extra, dtype=torch.bool)], 1))


# ---- pad_batch and attention_mask, hand-worked -----------------------------------------------------------------

def test_pad_batch_hand_worked():
    ids, mask = pad_batch([[5, 7, 9], [6], [4, 4, 4, 4, 4]], pad_id=0, max_len=4)
    assert ids.tolist() == [[5, 7, 9, 0], [6, 0, 0, 0], [4, 4, 4, 4]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    ids, mask = pad_batch([[3], []], pad_id=1)
    assert ids.tolist() == [[3], [1]] and mask.tolist() == [[True], [False]]
    with pytest.raises(ValueError):
        pad_batch([])


def test_attention_mask_hand_worked():
    key = torch.tensor([[True, True, False], [False, False, False]])
    m = attention_mask(key, 3)  # [2, 1, 1, 3]: padding on the key side only; all-pad row sees everything
    assert m.shape == (2, 1, 1, 3)
    assert m[:, 0, 0].tolist() == [[True, True, False], [True, True, True]]
    c = attention_mask(key[:1], 3, causal=True)[0, 0]  # [3, 3]
    assert c.tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    # one new query after 2 cached keys (generation): it sits at position 2 and sees keys 0..2
    c = attention_mask(torch.tensor([[True, True, True]]), 1, causal=True)[0, 0]
    assert c.tolist() == [[True, True, True]]
    c = attention_mask(torch.tensor([[True] * 4]), 2, causal=True)[0, 0]
    assert c.tolist() == [[True, True, True, False], [True, True, True, True]]


# ---- attention: SDPA path == explicit softmax(QK^T / sqrt(d)) V --------------------------------------------------

def reference_attention(att, x, key_mask, context=None, causal=False):
    """Slow, obvious multi-head attention with the module's weights; rows with no visible key are not compared."""
    B, T, C = x.shape
    H, d = att.n_heads, C // att.n_heads
    src = x if context is None else context
    q = att.q(x)
    k, v = att.kv(src).chunk(2, dim=-1)
    S = src.size(1)
    out = torch.zeros(B, T, C)
    for b in range(B):
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            a = q[b, :, sl] @ k[b, :, sl].t() / math.sqrt(d)  # [T, S]
            visible = key_mask[b][None, :].expand(T, S).clone()
            if causal:
                visible &= torch.ones(T, S, dtype=torch.bool).tril()
            a = a.masked_fill(~visible, float("-inf"))
            out[b, :, sl] = torch.softmax(a, dim=-1) @ v[b, :, sl]
    return att.proj(out)


@pytest.mark.parametrize("kind", ["self", "self-causal", "cross"])
def test_attention_matches_reference(kind):
    torch.manual_seed(0)
    cfg = tiny(dropout=0.0)
    att = Attention(cfg, cross=kind == "cross").eval()
    x = torch.randn(3, 6, cfg.dim)
    ctx = torch.randn(3, 9, cfg.dim) if kind == "cross" else None
    S = 9 if kind == "cross" else 6
    key_mask = torch.arange(S)[None, :] < torch.tensor([[S], [4], [2]])  # right padding, lengths S, 4, 2
    causal = kind == "self-causal"
    y = att(x, attention_mask(key_mask, 6, causal=causal), context=ctx)
    ref = reference_attention(att, x, key_mask, ctx, causal)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_all_pad_row_stays_finite():
    torch.manual_seed(0)
    enc = Encoder(tiny()).eval()
    ids, mask = pad_batch([[5, 11, 12], []])
    h = enc(ids, mask)
    assert torch.isfinite(h).all()
    h.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


# ---- encoder and dual-encoder ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling,normalize", [("cls", False), ("mean", False), ("mean", True)])
def test_dual_encoder_padding_invariance(pooling, normalize):
    torch.manual_seed(0)
    de = DualEncoder(tiny(pooling=pooling, normalize=normalize, init_std=1.0)).eval()
    ids, mask = pad_batch(random_seqs(5, 1, 10, seed=1))
    e = de.encode(ids, mask)
    ids2, mask2 = add_pad_columns(ids, mask, 7)
    torch.testing.assert_close(de.encode(ids2, mask2), e, atol=1e-5, rtol=0)
    h, h2 = de.token_states(ids, mask), de.token_states(ids2, mask2)
    torch.testing.assert_close(h2[:, : ids.size(1)][mask], h[mask], atol=1e-5, rtol=0)
    assert torch.isfinite(h2).all()  # pad positions produce finite states, they just do not matter
    # each row alone (no padding at all) gives the same embedding as in the batch
    for i in range(len(ids)):
        L = int(mask[i].sum())
        torch.testing.assert_close(de.encode(ids[i : i + 1, :L], mask[i : i + 1, :L])[0], e[i], atol=1e-5, rtol=0)


def test_pooling_normalize_and_score_by_hand():
    torch.manual_seed(0)
    ids, mask = pad_batch(random_seqs(4, 2, 8, seed=2))
    de = DualEncoder(tiny(pooling="mean")).eval()
    h = de.token_states(ids, mask)
    mean = torch.stack([h[i, mask[i]].mean(0) for i in range(4)])
    torch.testing.assert_close(de.encode(ids, mask), mean)
    de.cfg.pooling = "cls"
    torch.testing.assert_close(de.encode(ids, mask), h[:, 0])
    de.cfg.normalize = True
    e = de.encode(ids, mask)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
    s = de.score(e[:1], e[1:])
    assert s.shape == (1, 3)
    torch.testing.assert_close(s[0, 2], (e[0] * e[3]).sum())
    with pytest.raises(ValueError):
        DualEncoder(tiny(pooling="max"))


def test_encoder_is_bidirectional_and_rejects_long_input():
    torch.manual_seed(0)
    enc = Encoder(tiny()).eval()
    ids, mask = pad_batch([[5, 11, 12, 13, 14]])
    h = enc(ids, mask)
    ids2 = ids.clone()
    ids2[0, 4] = 30
    assert not torch.allclose(enc(ids2, mask)[0, 0], h[0, 0])  # a later token changes the first position
    ids, mask = pad_batch([[5] * 25])
    with pytest.raises(ValueError, match="max_len"):
        enc(ids, mask)


def test_init_std_reaches_token_embeddings_only_and_dropout_switches():
    torch.manual_seed(0)
    enc = Encoder(tiny(vocab_size=2000, dim=64, init_std=1.0))
    assert abs(enc.tok.weight.std().item() - 1.0) < 0.02
    assert abs(enc.pos.weight.std().item() - 0.02) < 0.002
    assert abs(enc.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.002
    enc = Encoder(tiny(dropout=0.5))
    ids, mask = pad_batch([[5, 11, 12, 13]])
    assert not torch.equal(enc(ids, mask), enc(ids, mask))  # training mode: dropout on
    enc.eval()
    assert torch.equal(enc(ids, mask), enc(ids, mask))


def test_mlm_head_is_tied():
    torch.manual_seed(0)
    enc = Encoder(tiny())
    h = torch.randn(2, 3, 32)
    torch.testing.assert_close(enc.mlm_logits(h), h @ enc.tok.weight.t() + enc.mlm_bias)
    enc.mlm_logits(h).sum().backward()
    assert enc.tok.weight.grad is not None and enc.tok.weight.grad.abs().sum() > 0


# ---- each model overfits a handful of examples --------------------------------------------------------------------

def test_encoder_overfits_mlm():
    torch.manual_seed(0)
    enc = Encoder(tiny(dropout=0.0))
    ids, mask = pad_batch(random_seqs(4, 6, 10, seed=3))
    masked = ids.clone()
    where = torch.zeros_like(mask)
    where[:, 2] = where[:, 4] = True  # predict positions 2 and 4 of every sequence
    masked[where] = 4  # [MASK]
    opt = torch.optim.AdamW(enc.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(enc.mlm_logits(enc(masked, mask))[where], ids[where])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_dual_encoder_overfits_contrastive():
    torch.manual_seed(0)
    de = DualEncoder(tiny(dropout=0.0, init_std=1.0))
    q_ids, q_mask = pad_batch(random_seqs(6, 3, 6, seed=4))
    p_ids, p_mask = pad_batch([[6] + s[1:] for s in random_seqs(6, 6, 12, seed=5)])
    opt = torch.optim.AdamW(de.parameters(), lr=3e-3)
    for _ in range(60):
        s = de.score(de.encode(q_ids, q_mask), de.encode(p_ids, p_mask))  # [6, 6], positives on the diagonal
        loss = F.cross_entropy(s, torch.arange(6))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01


# ---- checkpoints --------------------------------------------------------------------------------------------------

def test_dual_encoder_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = tiny(pooling="mean", normalize=True)
    de = DualEncoder(cfg).eval()
    torch.save({"model": de.state_dict(), "config": dataclasses.asdict(cfg)}, tmp_path / "de.pt")
    ckpt = torch.load(tmp_path / "de.pt", weights_only=True)
    de2 = DualEncoder(ModelConfig(**ckpt["config"]))
    de2.load_state_dict(ckpt["model"])
    de2.eval()
    assert de2.cfg == cfg
    ids, mask = pad_batch(random_seqs(3, 2, 9, seed=6))
    assert torch.equal(de2.encode(ids, mask), de.encode(ids, mask))
    # and from a bare (MLM) encoder's weights
    de3 = DualEncoder(cfg).eval()
    de3.load_encoder(de.encoder.state_dict())
    assert torch.equal(de3.encode(ids, mask), de.encode(ids, mask))
