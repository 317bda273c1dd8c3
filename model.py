"""A small transformer encoder and the dual-encoder student (METHOD.md section 1).

    cfg = ModelConfig(vocab_size=8000)
    de = DualEncoder(cfg)
    ids, mask = pad_batch([[5, 17, 42], [6, 99, 12, 7]])   # [Q]/[P] marker first, right-padded
    e = de.encode(ids, mask)                              # [2, 128]
    s = de.score(e[:1], e[1:])                            # s(q, p) = <e(q), e(p)>, [1, 1]

Pieces, in reading order: `ModelConfig`, `pad_batch`, `attention_mask`, `Attention` (multi-head, through
`F.scaled_dot_product_attention`; self or cross, padding and causal masks, optional key/value cache), `MLP` (GELU),
`Block` (pre-LayerNorm, optional cross-attention sublayer), `Encoder` (token + learned position embeddings,
bidirectional blocks, final LayerNorm, MLM head tied to the token embeddings) and `DualEncoder` (one shared encoder
for queries and passages, CLS or mean pooling, optional L2 normalisation, inner-product score).
teacher.py builds the query generator and the cross-encoder from the same blocks.

Masks: `mask` [B, T] bool is True at real tokens. Padding is masked on the key side only, so every query row of a
non-empty sequence sees at least one key; a row that would see none (an all-pad sequence) attends to every key
instead, which keeps it finite (its output is never used) rather than NaN.

Shapes: B batch, T tokens (S keys), C channels, H heads, V vocabulary, Q queries, N passages.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int  # tokenizer vocabulary size V
    dim: int = 128  # channels C
    n_layers: int = 2  # encoder blocks
    n_heads: int = 4  # attention heads H (dim % n_heads == 0)
    max_len: int = 128  # longest sequence (learned position embeddings)
    dropout: float = 0.1  # dropout on embeddings, attention weights and residual branches
    pooling: str = "cls"  # DualEncoder: 'cls' = first position (the [Q]/[P] marker) | 'mean' over real tokens
    normalize: bool = False  # DualEncoder: L2-normalise embeddings (use tau ~ 0.05 in the loss when True)
    init_std: float = 0.02  # std of the token-embedding init; decides whether a from-scratch DE learns (see Encoder)
    pad_id: int = 0  # padding token id
    n_dec_layers: int = 2  # decoder blocks (teacher.QueryGenerator only)


def pad_batch(seqs, pad_id=0, max_len=None):
    """Right-pad lists of token ids: -> ids [B, T] long, mask [B, T] bool (True = real token).

    Sequences longer than max_len are truncated (keeping the start); T = the longest kept length (at least 1).
    """
    if not seqs:
        raise ValueError("pad_batch: empty batch")
    seqs = [list(s[:max_len]) if max_len is not None else list(s) for s in seqs]
    T = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def attention_mask(key_mask, n_queries, causal=False):
    """Key padding mask [B, S] (True = real) -> boolean SDPA mask [B, 1, 1 or Tq, S] (True = may attend).

    Causal: query i sits at absolute position S - Tq + i (the last Tq of S positions, as with a key/value cache)
    and sees keys 0..S - Tq + i. A row with no visible key attends to all keys: finite output instead of NaN.
    """
    m = key_mask[:, None, None, :]  # [B, 1, 1, S]
    if causal:
        S = key_mask.size(1)
        m = m & torch.ones(n_queries, S, dtype=torch.bool, device=key_mask.device).tril(S - n_queries)  # [B,1,Tq,S]
    return m | ~m.any(-1, keepdim=True)


class Attention(nn.Module):
    """Multi-head attention. Self-attention (keys = x) or cross-attention (keys = context, e.g. encoder memory)."""

    def __init__(self, cfg, cross=False):
        super().__init__()
        assert cfg.dim % cfg.n_heads == 0, "dim must be divisible by n_heads"
        self.n_heads, self.cross, self.dropout = cfg.n_heads, cross, cfg.dropout
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def heads(self, x):
        """[B, T, C] -> [B, H, T, C/H]"""
        B, T, C = x.shape
        return x.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)

    def keys_values(self, x):
        """Keys and values of x [B, S, C]: two [B, H, S, C/H] tensors."""
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x, mask, context=None, cache=None):
        """x [B, T, C]; mask [B, 1, 1 or T, S] bool from `attention_mask`; context [B, S, C] for cross-attention.

        cache (a dict, filled in place): self-attention appends this call's keys/values to the cached ones;
        cross-attention computes them from context once and reuses them afterwards (context may then be None).
        """
        B, T, C = x.shape
        q = self.heads(self.q(x))  # [B, H, T, C/H]
        if self.cross and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]  # [B, H, S, C/H]
        else:
            k, v = self.keys_values(context if self.cross else x)  # [B, H, S, C/H]
            if cache is not None and not self.cross and "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            if cache is not None:
                cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # [B, T, C]
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.dim, 4 * cfg.dim)
        self.proj = nn.Linear(4 * cfg.dim, cfg.dim)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))  # [B, T, 4C] inside


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x += attn(ln(x)); [x += cross_attn(ln(x), memory)]; x += mlp(ln(x))."""

    def __init__(self, cfg, cross=False):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.dim), Attention(cfg)
        if cross:
            self.ln_cross, self.cross = nn.LayerNorm(cfg.dim), Attention(cfg, cross=True)
        self.ln2, self.mlp = nn.LayerNorm(cfg.dim), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, memory=None, memory_mask=None, cache=None):
        """x [B, T, C]; mask as in Attention; memory [B, S, C] + memory_mask [B, 1, 1, S] for cross-attention.
        cache: {'self': {}, 'cross': {}} for this block, or None."""
        x = x + self.drop(self.attn(self.ln1(x), mask, cache=None if cache is None else cache["self"]))
        if hasattr(self, "cross"):
            c = None if cache is None else cache["cross"]
            x = x + self.drop(self.cross(self.ln_cross(x), memory_mask, context=memory, cache=c))
        return x + self.drop(self.mlp(self.ln2(x)))


def init_weights(module, init_std):
    """Linear and position-embedding weights ~ N(0, 0.02), biases 0, LayerNorm 1/0; token embeddings ~ N(0, init_std).
    Token embeddings are recognised by name (`tok`) so that `init_std` reaches only them."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=init_std if name.split(".")[-1] == "tok" else 0.02)


class Encoder(nn.Module):
    """Bidirectional transformer encoder with a masked-language-model head tied to the token embeddings.

    Initialisation: the token embeddings start ~ N(0, cfg.init_std), every other weight ~ N(0, 0.02). METHOD.md
    ('Practical note') measured that this one scale decides whether a dual-encoder trained from scratch learns:
    std 0.02 (BERT/GPT default) barely moved, std 1.0 started like bag-of-words matching (each token's embedding
    dominates the small position embedding and survives the residual stream) and kept improving.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        init_weights(self, cfg.init_std)

    def forward(self, ids, mask):
        """ids [B, T] long, mask [B, T] bool (True = real token) -> hidden states [B, T, C] (final LayerNorm)."""
        T = ids.size(1)
        if T > self.cfg.max_len:
            raise ValueError(f"sequence length {T} > max_len {self.cfg.max_len}")
        x = self.drop(self.tok(ids) + self.pos(torch.arange(T, device=ids.device)))  # [B, T, C]
        m = attention_mask(mask, T)  # [B, 1, 1, T]
        for block in self.blocks:
            x = block(x, m)
        return self.ln_f(x)

    def mlm_logits(self, h):
        """h [B, T, C] -> [B, T, V]: logits over the vocabulary through the (tied) token-embedding matrix."""
        return F.linear(h, self.tok.weight, self.mlm_bias)


class DualEncoder(nn.Module):
    """One shared encoder for queries and passages; s(q, p) = <e(q), e(p)> (METHOD.md section 1).

    The caller puts the [Q] or [P] marker first in each sequence; 'cls' pooling takes that position's state.
    """

    def __init__(self, cfg):
        super().__init__()
        if cfg.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {cfg.pooling!r}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)

    def load_encoder(self, encoder_state_dict):
        """Start from a pre-trained (MLM) Encoder."""
        self.encoder.load_state_dict(encoder_state_dict)

    def token_states(self, ids, mask):
        """[B, T] -> [B, T, C]: the encoder's per-token output (DR.DECR token-level distillation)."""
        return self.encoder(ids, mask)

    def encode(self, ids, mask):
        """ids, mask [B, T] -> e [B, C]."""
        return self.pool(self.encoder(ids, mask), mask)

    def pool(self, h, mask):
        """Token states h [B, T, C] (from token_states) -> e [B, C]: CLS or mean pooling, optional L2 norm."""
        if self.cfg.pooling == "cls":
            e = h[:, 0]
        else:
            m = mask.unsqueeze(-1).to(h.dtype)  # [B, T, 1]
            e = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(e, dim=-1) if self.cfg.normalize else e

    @staticmethod
    def score(q, p):
        """q [Q, C], p [N, C] -> s [Q, N] inner products, in float32 even under bf16 autocast (they are the logits of
        the training losses)."""
        with torch.autocast(q.device.type, enabled=False):
            return q.float() @ p.float().T
