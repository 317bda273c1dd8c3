"""The teachers: a query generator (METHOD.md section 2) and a cross-encoder (section 3).

    qg = QueryGenerator(ModelConfig(vocab_size=8000))
    p_ids, p_mask = pad_batch(passages)                    # N passages
    tgt, tgt_mask = pad_batch([[tag] + q + [eos] for q, tag in ...])   # Q targets: <2l> q_1..q_n [EOS]
    r = qg.score(p_ids, p_mask, tgt, tgt_mask, cand)       # cand [Q, k] -> r(q, p) [Q, k]
    q_ids, q_mask = qg.generate(p_ids, p_mask, lang_ids, max_new_tokens=32, eos_id=8)

QueryGenerator: an Encoder over the passage (from model.py, can start from a pre-trained MLM encoder) and a causal
decoder whose blocks cross-attend to the passage. Token embeddings are shared by encoder, decoder and output layer.
The decoder's first input is the language tag <2l>, so one model writes queries in every language; it is trained
with teacher forcing to predict tgt[:, 1:] from tgt[:, :-1] (`loss`, L_gen). The relevance score is the mean token
log-likelihood r(q, p) = 1/|q| sum_t log P(q_t | q_<t, p, l) over the query tokens and [EOS] (tag excluded).
`score` encodes each passage once, computes each passage's cross-attention keys/values once, gathers them for the
Q*k (query, candidate) pairs and runs one batched decoder pass (or `chunk`-row passes), with autograd, so the
ranking fine-tune L_qgrank can backpropagate through it. `generate` decodes greedily or by sampling (temperature,
top-k) with a key/value cache, stopping each row at [EOS].

CrossEncoder: the Encoder over [CLS] q [SEP] p (built by the caller) and a linear head on the first position.

Shapes: B batch, T target tokens, Tp passage tokens, C channels, H heads, V vocabulary, Q queries, N passages,
k candidates per query.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Block, Encoder, attention_mask, init_weights


def sample(logits, temperature=0.0, top_k=0, generator=None):
    """logits [B, V] -> next token [B]: argmax when temperature == 0, else a draw from softmax(logits / temperature)
    restricted to the top_k most likely tokens (all tokens when top_k == 0)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1).cpu()  # drawn on the CPU: one stream of draws for a CPU generator, whatever the device
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


def mean_loglik(lp, tgt_mask):
    """r(q, p) = 1/|q| sum_t log P(q_t | q_<t, p, l), METHOD.md 2, the one definition behind both L_gen and the
    relevance score: lp [B, T-1] token log-probabilities (0 at padding), tgt_mask [B, T] of <2l> q [EOS] -> [B].
    |q| counts the query's tokens and [EOS], not the tag."""
    return lp.sum(1) / tgt_mask[:, 1:].sum(1).clamp(min=1)


class QueryGenerator(nn.Module):
    """Encoder-decoder that writes (and scores) queries for passages, in the language named by the first token."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)  # passage encoder; owns the shared token embeddings `encoder.tok`
        self.dec_pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.dec_blocks = nn.ModuleList(Block(cfg, cross=True) for _ in range(cfg.n_dec_layers))
        self.ln_dec = nn.LayerNorm(cfg.dim)
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        for m in (self.dec_pos, self.dec_blocks):
            init_weights(m, cfg.init_std)

    def load_encoder(self, encoder_state_dict):
        """Start the passage encoder and the shared token embeddings from a pre-trained (MLM) Encoder."""
        self.encoder.load_state_dict(encoder_state_dict)

    def encode(self, p_ids, p_mask):
        """p_ids, p_mask [N, Tp] -> memory [N, Tp, C]."""
        return self.encoder(p_ids, p_mask)

    def new_cache(self):
        """An empty key/value cache for `decode`: the key mask so far and, per block, self- and cross-attention."""
        return {"mask": None, "blocks": [{"self": {}, "cross": {}} for _ in self.dec_blocks]}

    def decode(self, memory, p_mask, tgt_in, tgt_mask, cache=None):
        """memory [B, Tp, C], p_mask [B, Tp], tgt_in/tgt_mask [B, T] -> logits [B, T, V].

        With a cache (from `new_cache`, filled in place) tgt_in holds only the new tokens, placed after the cached
        ones; the passage's cross-attention keys/values are computed at the first call and reused (memory may be
        None when the cache already holds them, as in `score`).
        """
        T = tgt_in.size(1)
        past = 0 if cache is None or cache["mask"] is None else cache["mask"].size(1)
        if past + T > self.cfg.max_len:
            raise ValueError(f"target length {past + T} > max_len {self.cfg.max_len}")
        key_mask = tgt_mask if past == 0 else torch.cat([cache["mask"], tgt_mask], dim=1)  # [B, past + T]
        if cache is not None:
            cache["mask"] = key_mask
        pos = torch.arange(past, past + T, device=tgt_in.device)
        x = self.drop(self.encoder.tok(tgt_in) + self.dec_pos(pos))  # [B, T, C]
        self_mask = attention_mask(key_mask, T, causal=True)  # [B, 1, T, past + T]
        cross_mask = attention_mask(p_mask, T)  # [B, 1, 1, Tp]
        for i, block in enumerate(self.dec_blocks):
            x = block(x, self_mask, memory, cross_mask, cache=None if cache is None else cache["blocks"][i])
        return F.linear(self.ln_dec(x), self.encoder.tok.weight, self.out_bias)  # [B, T, V], tied embeddings

    def forward(self, p_ids, p_mask, tgt, tgt_mask):
        """Teacher forcing: p [B, Tp], tgt [B, T] = <2l> q [EOS] -> logits [B, T-1, V] predicting tgt[:, 1:]."""
        return self.decode(self.encode(p_ids, p_mask), p_mask, tgt[:, :-1], tgt_mask[:, :-1])

    def token_logprobs(self, memory, p_mask, tgt, tgt_mask, cache=None):
        """log P(tgt[:, t+1] | tgt[:, :t+1], p) -> [B, T-1], 0 at padding."""
        logits = self.decode(memory, p_mask, tgt[:, :-1], tgt_mask[:, :-1], cache)  # [B, T-1, V]
        lp = F.log_softmax(logits.float(), dim=-1).gather(-1, tgt[:, 1:, None]).squeeze(-1)  # [B, T-1]
        return torch.where(tgt_mask[:, 1:], lp, 0.0)

    def loss(self, p_ids, p_mask, tgt, tgt_mask):
        """L_gen: minus the mean token log-likelihood of each target, averaged over the batch (= -mean r(q, p+))."""
        lp = self.token_logprobs(self.encode(p_ids, p_mask), p_mask, tgt, tgt_mask)  # [B, T-1]
        return -mean_loglik(lp, tgt_mask).mean()

    def score(self, p_ids, p_mask, tgt, tgt_mask, cand, chunk=None):
        """r(q, p) for candidate lists: p [N, Tp] unique passages, tgt [Q, T] queries, cand [Q, k] indices into
        the N passages -> [Q, k]. Differentiable; wrap in torch.no_grad() when only the scores are needed.
        chunk bounds the decoder batch (rows = (query, candidate) pairs); None = on a CPU as many rows as keep one
        pass's logits near 16 MB (4M floats), measured 1.5-1.9x faster than one pass over all pairs; on a GPU,
        256M logits a pass."""
        Q, k = cand.shape
        memory = self.encode(p_ids, p_mask)  # [N, Tp, C], each passage once
        kv = [block.cross.keys_values(memory) for block in self.dec_blocks]  # per block 2 x [N, H, Tp, C/H]
        rows = cand.reshape(-1)  # [Q*k] passage of each pair
        qrows = torch.arange(Q, device=cand.device).repeat_interleave(k)  # [Q*k] query of each pair
        budget = 1 << 28 if p_ids.is_cuda else 1 << 22  # logits per decoder pass
        out, step = [], chunk or max(1, budget // (tgt.size(1) * self.cfg.vocab_size))
        for s in range(0, len(rows), step):
            r, qr = rows[s : s + step], qrows[s : s + step]
            cache = self.new_cache()
            for c, (key, value) in zip(cache["blocks"], kv):
                c["cross"].update(k=key[r], v=value[r])  # [b, H, Tp, C/H] gathered, not recomputed
            lp = self.token_logprobs(None, p_mask[r], tgt[qr], tgt_mask[qr], cache)  # [b, T-1]
            out.append(mean_loglik(lp, tgt_mask[qr]))
        return torch.cat(out).view(Q, k)

    @torch.no_grad()
    def generate(self, p_ids, p_mask, lang_ids, max_new_tokens, eos_id, temperature=0.0, top_k=0, generator=None,
                 use_cache=True, banned=(), no_repeat=0):
        """Write one query per passage: p [B, Tp], lang_ids [B] (the <2l> tag of each row's target language).

        Returns ids [B, T] long, mask [B, T] bool: the tokens after the tag, [EOS] excluded, right-padded with
        pad_id (T <= max_new_tokens). Neither the pad token nor any id in `banned` (e.g. the other special tokens
        and the language tags) is ever generated; with no_repeat = n > 0 no n-gram occurs twice in a row's query
        (a token that would complete an n-gram already written is excluded: `wasi wasi wasi` cannot happen with n = 2).
        use_cache=False recomputes the whole prefix at every step (the slow reference the cache is tested against).
        """
        B, pad = p_ids.size(0), self.cfg.pad_id
        memory = self.encode(p_ids, p_mask)  # [B, Tp, C]
        tgt = lang_ids.view(B, 1)  # decoder input so far [B, t]
        cache = self.new_cache() if use_cache else None
        alive = torch.ones(B, dtype=torch.bool, device=p_ids.device)
        ids, mask = [], []
        for _ in range(max_new_tokens):
            x = tgt[:, -1:] if use_cache else tgt
            logits = self.decode(memory, p_mask, x, torch.ones_like(x, dtype=torch.bool), cache)[:, -1]  # [B, V]
            logits[:, [pad, *banned]] = float("-inf")
            if no_repeat:
                for b, row in enumerate(tgt[:, 1:].tolist()):  # the row's tokens so far, the tag excluded
                    prefix = tuple(row[len(row) - no_repeat + 1:]) if no_repeat > 1 else ()
                    if len(row) >= no_repeat:
                        seen = [row[i + no_repeat - 1] for i in range(len(row) - no_repeat + 1)
                                if tuple(row[i:i + no_repeat - 1]) == prefix]
                        logits[b, seen] = float("-inf")
            nxt = sample(logits, temperature, top_k, generator)  # [B]
            keep = alive & (nxt != eos_id)
            ids.append(nxt.masked_fill(~keep, pad))
            mask.append(keep)
            alive = keep
            if not alive.any():
                break
            tgt = torch.cat([tgt, nxt[:, None]], dim=1)
        ids, mask = torch.stack(ids, 1), torch.stack(mask, 1)  # [B, steps]
        T = max(1, int(mask.sum(1).max()))
        return ids[:, :T], mask[:, :T]


class CrossEncoder(nn.Module):
    """c(q, p): the Encoder over [CLS] q [SEP] p and a linear head on the first position."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.head = nn.Linear(cfg.dim, 1)
        init_weights(self.head, cfg.init_std)

    def load_encoder(self, encoder_state_dict):
        """Start the encoder from a pre-trained (MLM) Encoder."""
        self.encoder.load_state_dict(encoder_state_dict)

    def forward(self, ids, mask):
        """ids, mask [B, T] -> scores [B]."""
        return self.head(self.encoder(ids, mask)[:, 0]).squeeze(-1)
