"""Every training objective of xqg as a pure function of tensors (METHOD.md sections 1-6): no models, no data.

    contrastive_loss   dual-encoder, in-batch + hard negatives (DPR)                      METHOD.md 1
    rank_loss          listwise softmax CE, positive at column 0 (cross-encoder, QG rank)  METHOD.md 2, 3
    qg_rank_loss       rank_loss over QG log-likelihoods + lambda_gen * L_gen              METHOD.md 2
    kd_loss            KL(P_T || P_S) over each query's candidates                         METHOD.md 4, 6a
    align_dist_loss    KL(stopgrad P_S(.|q) || P_S(.|q')), the `dist` alignment           METHOD.md 5
    align_emb_loss     in-batch contrastive between e(q') and e(q), the `emb` alignment    METHOD.md 5
    token_kd_loss      DR.DECR token-level representation KD (greedy cosine alignment)     METHOD.md 6b
    matched_temperature  the teacher temperature whose softmax is as sharp as the student's   METHOD.md 4 (ours)
(The `kd` alignment variant is kd_loss with teacher scores of the generated query. L_gen and r(q, p) are the
query generator's own: teacher.QueryGenerator.loss and .score, one definition, METHOD.md 2.)

Conventions, shared by every function:
- Shapes: B batch, M candidates per row, T tokens, V vocabulary, C channels, Q queries, k/K candidates per query.
- Masks are bool, True = valid. A masked candidate gets probability exactly 0 and gradient exactly 0, whatever
  its score; it is filled with -inf (never -1e9, which overflows fp16). A row with no valid entry raises ValueError.
- Temperatures divide the scores before the softmax, in one place: masked_log_softmax.
- bf16/fp16 inputs are computed in float32 (float64 stays float64); losses are means over rows (queries).
Tests: tests/test_losses.py checks each loss against a slow float64 loop reference.
"""
import math

import torch
import torch.nn.functional as F


def _float(x):
    """Upcast bf16/fp16 to float32 so exp, squares and 1/tau cannot overflow; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_mask(mask, shape, what="candidate"):
    """A bool mask of the given shape with a valid entry in every row (one host sync on GPU), else ValueError."""
    if mask.dtype != torch.bool or mask.shape != shape:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if not mask.any(-1).all():
        rows = (~mask.any(-1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows[:5]} have no valid {what} (mask all False): the loss would be NaN")


def masked_log_softmax(scores, mask=None, tau=1.0):
    """log softmax(scores / tau) over the last dim, over the valid (mask True) entries only.

    scores [..., M], mask [..., M] bool or None -> log-probs [..., M] (float32 or float64).
    Masked entries: log-prob -inf (probability 0) and zero gradient. Zero the -inf before multiplying by 0.
    """
    x = _float(scores) / tau
    if mask is None:
        return F.log_softmax(x, dim=-1)
    _check_mask(mask, scores.shape)
    return F.log_softmax(x.masked_fill(~mask, float("-inf")), dim=-1)


def contrastive_loss(scores, pos, mask=None, tau=1.0):
    """DPR contrastive loss (Karpukhin et al., 2020), METHOD.md 1:
        L_ce = -1/B * sum_i log softmax_j(s(q_i, p_j) / tau)[pos_i]

    scores [B, M] = s(q_i, p_j) over all M = B(1+h) passages of the batch; pos [B] long, column of row i's positive.
    mask [B, M] bool or None: False removes a candidate from row i (the caller marks other positives of q_i and
    duplicates of p_i+ False); mask[i, pos[i]] must be True. Mean over rows.
    Returns (loss scalar, acc): acc = fraction of rows whose highest valid score is at pos (0-dim, no grad).
    """
    logp = masked_log_softmax(scores, mask, tau)                # [B, M]
    if mask is not None and not mask.gather(1, pos[:, None]).all():
        raise ValueError("contrastive_loss: mask is False at a row's own positive; its positive must stay valid")
    loss = -logp.gather(1, pos[:, None]).mean()
    acc = (logp.argmax(-1) == pos).float().mean().detach()
    return loss, acc


def rank_loss(scores, mask=None, tau=1.0):
    """Listwise softmax cross-entropy with the positive at column 0: localized contrastive estimation (Gao et al.,
    2021), the cross-encoder and QG ranking losses of METHOD.md 2-3:
        L_rank = -1/Q * sum_q log softmax_j(scores[q, j] / tau)[0]

    scores [Q, k]: column 0 the positive, columns 1.. its retrieved negatives; mask [Q, k] bool or None (ragged
    lists; column 0 must be valid). Mean over queries.
    """
    logp = masked_log_softmax(scores, mask, tau)                # [Q, k]
    if mask is not None and not mask[:, 0].all():
        raise ValueError("rank_loss: mask is False in column 0, where each query's positive must be")
    return -logp[:, 0].mean()


def qg_rank_loss(r, nll, mask=None, tau_r=1.0, lambda_gen=1.0):
    """QG ranking fine-tune, METHOD.md 2: L_qgrank = rank_loss(r / tau_r) + lambda_gen * L_gen.

    r [Q, k]: r(q, p_j) mean token log-likelihoods (QueryGenerator.score), positive at column 0; nll: scalar L_gen
    of the positives, -1/Q sum_q r(q, p+) (= -r[:, 0].mean(), as train.py passes it). lambda_gen > 0 keeps the generator able to write queries. Scalar.
    """
    return rank_loss(r, mask, tau_r) + lambda_gen * nll


def kd_loss(student, teacher, mask=None, tau_s=1.0, tau_t=1.0):
    """Knowledge distillation (RocketQAv2, Ren et al. 2021; Translate-Distill), METHOD.md 4 and DR.DECR's relevance KD:
        L_kd = 1/Q * sum_q KL(P_T || P_S) = 1/Q * sum_q sum_j P_T_j (log P_T_j - log P_S_j)
    with P_T = softmax(teacher / tau_t), P_S = softmax(student / tau_s). Forward KL: teacher first.

    student, teacher [Q, K]: scores of the same K candidates; mask [Q, K] bool or None for ragged lists: a padded
    candidate has probability 0 on both sides and gets zero gradient. The teacher is detached. Mean over queries.
    """
    logp_t = masked_log_softmax(teacher.detach(), mask, tau_t)  # [Q, K]
    logp_s = masked_log_softmax(student, mask, tau_s)           # [Q, K]
    p_t = logp_t.exp()                                          # 0 where masked
    if mask is not None:  # padded terms are 0 * (-inf - -inf) = NaN: make them 0 * 0
        logp_t, logp_s = logp_t.masked_fill(~mask, 0), logp_s.masked_fill(~mask, 0)
    return (p_t * (logp_t - logp_s)).sum(-1).mean()


def standardize(scores, eps=1e-6):
    """Each row of scores [Q, K] to mean 0 and standard deviation 1 (ours, METHOD.md 4, kd_standardize):
        z_j = (t_j - mean_j t) / max(sd_j t, eps)
    so that one temperature fits every query, whatever the scale of its teacher scores. Order within a row is kept;
    a constant row becomes zeros."""
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp_min(eps)


def mean_entropy(scores, mask=None, tau=1.0):
    """H(softmax(scores / tau)) = -sum_j P_j log P_j over each row's valid entries, averaged over rows (a float)."""
    logp = masked_log_softmax(scores, mask, tau)
    return -(logp.exp() * logp.masked_fill(logp == float("-inf"), 0)).sum(-1).mean().item()


@torch.no_grad()
def matched_temperature(teacher, student, mask=None, tau_s=1.0, lo=1e-4, hi=1e4, iters=60):
    """The teacher temperature (ours, METHOD.md 4) at which softmax(teacher / tau_T) is, on average over queries,
    exactly as sharp as the student's softmax(student / tau_s) over the same candidates:
        mean_q H(P_T(tau_T)) = mean_q H(P_S)
    Teachers score on their own scales (a QG's mean log-likelihoods differ by tenths, a dual-encoder's inner
    products by units); at tau_T = 1 a flat teacher would teach the student to flatten its ranking, not to reorder
    it. One rule for every teacher. The entropy grows with tau, so bisection on log tau within [lo, hi]; a teacher
    that ties every candidate is uniform at every tau and gets lo.
    teacher, student [Q, K]; mask [Q, K] bool or None. -> float."""
    target = mean_entropy(student, mask, tau_s)
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if mean_entropy(teacher, mask, mid) > target else (mid, hi)
    return math.sqrt(lo * hi)


def align_dist_loss(s_q, s_qg, mask=None, tau=1.0):
    """`dist` alignment (ours, METHOD.md 5): KL(stopgrad P_S(.|q) || P_S(.|q')) over the candidates C(q).

    s_q [Q, K]: student scores of C(q) for the original query q (detached: the teacher side);
    s_qg [Q, K]: student scores of the same candidates for the generated query q' (gets the gradient).
    Both softmaxes use tau. = kd_loss(s_qg, s_q, mask, tau, tau).
    """
    return kd_loss(s_qg, s_q, mask, tau_s=tau, tau_t=tau)


def align_emb_loss(e_q, e_qg, tau=1.0, mask=None):
    """`emb` alignment (ours, METHOD.md 5): in-batch contrastive from generated queries to original queries,
        L_emb = -1/B * sum_i log softmax_j(<e(q'_i), e(q_j)> / tau)[i]

    e_q [B, C] embeddings of the original queries, e_qg [B, C] of the queries generated for the same passages.
    One-sided (each q'_i picks its q_i among the batch's q); the gradient flows into both e_q and e_qg.
    mask [B, B] bool or None: False at (i, j) when q_j is also about q'_i's passage (several queries per passage in
    one batch); the diagonal must stay True. Mean over rows.
    """
    scores = e_qg @ e_q.T                                       # [B, B]
    pos = torch.arange(len(e_q), device=e_q.device)
    return contrastive_loss(scores, pos, mask, tau)[0]


def token_kd_loss(student, s_mask, teacher, t_mask):
    """DR.DECR token-level representation KD (Li et al., 2022), METHOD.md 6b:
        L_tok = 1/n * sum over valid student tokens (b, i) of 1/C * ||student[b, i] - teacher[b, j*]||^2,
        j* = argmax over valid teacher tokens j of cos(student[b, i], teacher[b, j])   (greedy alignment)

    student [B, Ts, C], s_mask [B, Ts]; teacher [B, Tt, C] (encoding of the translation), t_mask [B, Tt].
    The alignment has no gradient (argmax), the teacher is detached; n = number of valid student tokens.
    Each row needs at least one valid token on both sides.
    """
    _check_mask(s_mask, student.shape[:2], "student token")
    _check_mask(t_mask, teacher.shape[:2], "teacher token")
    student, teacher = _float(student), _float(teacher.detach())
    with torch.no_grad():
        cos = F.normalize(student, dim=-1) @ F.normalize(teacher, dim=-1).transpose(1, 2)  # [B, Ts, Tt]
        j = cos.masked_fill(~t_mask[:, None, :], float("-inf")).argmax(-1)                  # [B, Ts]
    matched = teacher.gather(1, j[..., None].expand(-1, -1, teacher.shape[-1]))          # [B, Ts, C]
    err = (student - matched).pow(2).mean(-1).masked_fill(~s_mask, 0)                    # [B, Ts]
    return err.sum() / s_mask.sum()
