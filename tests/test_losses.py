"""losses.py against slow float64 loop references; hand-worked values, masks, gradients, numerics, errors."""
import math

import pytest
import torch

import losses as L

ATOL = 1e-6


# ---------------------------------------------------------------- slow references: python floats, explicit loops
def ref_log_softmax(row, valid, tau=1.0):
    """row: list of floats, valid: list of bools -> list of log-probs over the valid entries (None where masked)."""
    xs = [x / tau for x, v in zip(row, valid) if v]
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x / tau - lse if v else None for x, v in zip(row, valid)]


def rows(scores, mask):
    s = scores.double().tolist()
    m = mask.tolist() if mask is not None else [[True] * len(r) for r in s]
    return s, m


def ref_contrastive(scores, pos, mask, tau):
    s, m = rows(scores, mask)
    loss, hits = 0.0, 0
    for i in range(len(s)):
        lp = ref_log_softmax(s[i], m[i], tau)
        loss -= lp[pos[i]]
        best = max((j for j in range(len(s[i])) if m[i][j]), key=lambda j: s[i][j])
        hits += best == pos[i]
    return loss / len(s), hits / len(s)


def ref_kd(student, teacher, mask, tau_s, tau_t):
    s, m = rows(student, mask)
    t, _ = rows(teacher, mask)
    total = 0.0
    for i in range(len(s)):
        lps, lpt = ref_log_softmax(s[i], m[i], tau_s), ref_log_softmax(t[i], m[i], tau_t)
        total += sum(math.exp(lpt[j]) * (lpt[j] - lps[j]) for j in range(len(s[i])) if m[i][j])
    return total / len(s)


def ref_token_kd(student, s_mask, teacher, t_mask):
    S, T = student.double().tolist(), teacher.double().tolist()
    norm = lambda a: math.sqrt(sum(x * x for x in a))
    cos = lambda a, b: sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))
    total, n = 0.0, 0
    for b in range(len(S)):
        valid_t = [j for j in range(len(T[b])) if t_mask[b, j]]
        for i in range(len(S[b])):
            if not s_mask[b, i]:
                continue
            j = max(valid_t, key=lambda j: cos(S[b][i], T[b][j]))
            total += sum((x - y) ** 2 for x, y in zip(S[b][i], T[b][j])) / len(S[b][i])
            n += 1
    return total / n


# ---------------------------------------------------------------- random inputs
def make_mask(kind, Q, K, gen, keep_col=None):
    """None, 'random' (each entry valid w.p. 0.6) or 'ragged' (a valid prefix of random length); never an empty row;
    keep_col [Q]: a column per row that must stay valid."""
    if kind is None:
        return None
    if kind == "random":
        mask = torch.rand(Q, K, generator=gen) < 0.6
    else:
        lengths = torch.randint(1, K + 1, (Q,), generator=gen)
        mask = torch.arange(K)[None, :] < lengths[:, None]
    keep_col = torch.zeros(Q, dtype=torch.long) if keep_col is None else keep_col
    mask[torch.arange(Q), keep_col] = True
    return mask


MASKS = [None, "random", "ragged"]


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("tau", [1.0, 0.05])
def test_contrastive_matches_reference(kind, tau):
    gen = torch.Generator().manual_seed(0)
    B, M = 6, 18
    scores = torch.randn(B, M, generator=gen, dtype=torch.float64)
    pos = torch.randint(0, M, (B,), generator=gen)
    mask = make_mask(kind, B, M, gen, keep_col=pos)
    loss, acc = L.contrastive_loss(scores, pos, mask, tau)
    ref_loss, ref_acc = ref_contrastive(scores, pos.tolist(), mask, tau)
    assert loss.item() == pytest.approx(ref_loss, abs=ATOL)
    assert acc.item() == pytest.approx(ref_acc) and not acc.requires_grad


@pytest.mark.parametrize("kind", MASKS)
def test_rank_and_qg_rank_match_reference(kind):
    gen = torch.Generator().manual_seed(1)
    Q, k = 5, 7
    scores = torch.randn(Q, k, generator=gen, dtype=torch.float64)
    mask = make_mask(kind, Q, k, gen)
    ref = ref_contrastive(scores, [0] * Q, mask, 0.5)[0]
    assert L.rank_loss(scores, mask, tau=0.5).item() == pytest.approx(ref, abs=ATOL)
    nll = torch.tensor(2.5)
    assert L.qg_rank_loss(scores, nll, mask, tau_r=0.5, lambda_gen=0.3).item() == pytest.approx(ref + 0.75, abs=ATOL)


@pytest.mark.parametrize("kind", MASKS)
def test_kd_and_align_dist_match_reference(kind):
    gen = torch.Generator().manual_seed(2)
    Q, K = 5, 9
    student, teacher = torch.randn(Q, K, generator=gen).double(), 3 * torch.randn(Q, K, generator=gen).double()
    mask = make_mask(kind, Q, K, gen)
    got = L.kd_loss(student, teacher, mask, tau_s=0.7, tau_t=2.0).item()
    assert got == pytest.approx(ref_kd(student, teacher, mask, 0.7, 2.0), abs=ATOL)
    # dist alignment: KL(P_S(.|q) || P_S(.|q')), the q side is the (detached) teacher
    assert L.align_dist_loss(teacher, student, mask, tau=0.5).item() == pytest.approx(
        ref_kd(student, teacher, mask, 0.5, 0.5), abs=ATOL)


def test_kd_direction_is_teacher_first():
    """Hand-worked: P_T = (1/2, 1/2), P_S = (1/5, 4/5): KL(T||S) = 1/2 ln(5/2) + 1/2 ln(5/8)."""
    teacher = torch.tensor([[0.0, 0.0]])
    student = torch.tensor([[0.0, math.log(4.0)]])
    expected = 0.5 * math.log(2.5) + 0.5 * math.log(5 / 8)
    assert L.kd_loss(student, teacher).item() == pytest.approx(expected, abs=ATOL)
    assert L.kd_loss(teacher, student).item() != pytest.approx(expected, abs=1e-3)  # the other direction differs


@pytest.mark.parametrize("with_mask", [False, True])
def test_align_emb_matches_reference_and_trains_both_sides(with_mask):
    gen = torch.Generator().manual_seed(3)
    B, C = 6, 8
    e_q = torch.randn(B, C, generator=gen, dtype=torch.float64, requires_grad=True)
    e_qg = torch.randn(B, C, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = None
    if with_mask:  # queries 0 and 1 are about the same passage: each is not a negative of the other
        mask = torch.ones(B, B, dtype=torch.bool)
        mask[0, 1] = mask[1, 0] = False
    loss = L.align_emb_loss(e_q, e_qg, tau=0.1, mask=mask)
    scores = torch.tensor([[sum(a * b for a, b in zip(x, y)) for y in e_q.tolist()] for x in e_qg.tolist()])
    assert loss.item() == pytest.approx(ref_contrastive(scores, list(range(B)), mask, 0.1)[0], abs=ATOL)
    loss.backward()
    assert e_q.grad.abs().sum() > 0 and e_qg.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", MASKS[1:])
def test_token_kd_matches_reference(kind):
    gen = torch.Generator().manual_seed(5)
    B, Ts, Tt, C = 3, 5, 7, 4
    student, teacher = torch.randn(B, Ts, C, generator=gen).double(), torch.randn(B, Tt, C, generator=gen).double()
    s_mask, t_mask = make_mask(kind, B, Ts, gen), make_mask(kind, B, Tt, gen)
    got = L.token_kd_loss(student, s_mask, teacher, t_mask).item()
    assert got == pytest.approx(ref_token_kd(student, s_mask, teacher, t_mask), abs=ATOL)


def test_token_kd_ignores_pads_and_trains_only_the_student():
    gen = torch.Generator().manual_seed(6)
    student = torch.randn(1, 3, 4, generator=gen, requires_grad=True)
    teacher = torch.randn(1, 4, 4, generator=gen, requires_grad=True)
    s_mask = torch.tensor([[True, True, False]])
    t_mask = torch.tensor([[True, True, True, False]])
    assert L.token_kd_loss(teacher[:, :3], s_mask, teacher, t_mask).item() == 0  # each token matches itself
    with torch.no_grad():
        teacher[0, 3] = 5 * student[0, 0]  # a padded teacher token, the most similar: never matched
    loss = L.token_kd_loss(student, s_mask, teacher, t_mask)
    assert loss.item() == pytest.approx(ref_token_kd(student, s_mask, teacher, t_mask), abs=ATOL)
    loss.backward()
    assert teacher.grad is None
    assert student.grad[0, 2].abs().sum() == 0 and student.grad[0, :2].abs().sum() > 0


# ---------------------------------------------------------------- known values
def test_known_values():
    gen = torch.Generator().manual_seed(7)
    t = torch.randn(4, 6, generator=gen)
    mask = make_mask("ragged", 4, 6, gen)
    assert L.kd_loss(t, t, mask, tau_s=0.3, tau_t=0.3).abs().item() < 1e-7  # KL of identical distributions
    assert L.align_dist_loss(t, t, mask).abs().item() < 1e-7
    perfect = torch.zeros(4, 6)
    perfect[:, 0] = 100.0  # the positive beats every negative by 100 / tau
    loss, acc = L.contrastive_loss(perfect, torch.zeros(4, dtype=torch.long), tau=0.5)
    assert loss.item() < 1e-30 and acc.item() == 1.0
    assert L.rank_loss(perfect).item() < 1e-30
    # uniform scores over n valid candidates: -log(1/n) per row
    assert L.rank_loss(torch.zeros(2, 5), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]).bool()).item() == \
        pytest.approx((math.log(2) + math.log(4)) / 2, abs=ATOL)


def masked_loss_fns():
    pos = torch.tensor([0, 2, 1, 3])
    return {
        "contrastive": lambda s, m: L.contrastive_loss(s, pos, m, 0.5)[0],
        "rank": lambda s, m: L.rank_loss(s, m, 0.5),
        "kd_student": lambda s, m: L.kd_loss(s, torch.arange(24.0).view(4, 6).cos(), m, 0.5, 2.0),
        "kd_teacher": lambda s, m: L.kd_loss(torch.arange(24.0).view(4, 6).sin(), s, m, 0.5, 2.0),
        "align_dist": lambda s, m: L.align_dist_loss(torch.arange(24.0).view(4, 6).cos(), s, m),
    }


@pytest.mark.parametrize("name", list(masked_loss_fns()))
def test_masked_candidate_gets_no_probability_or_gradient(name):
    fn = masked_loss_fns()[name]
    gen = torch.Generator().manual_seed(8)
    mask = make_mask("random", 4, 6, gen, keep_col=torch.tensor([0, 2, 1, 3]))
    mask[:, 0] = True
    mask[0, 5] = False
    base = torch.randn(4, 6, generator=gen)
    high = base.masked_fill(~mask, 1e4).requires_grad_()  # masked scores that would take all the probability
    low = base.masked_fill(~mask, -1e4)
    loss = fn(high, mask)
    assert loss.item() == pytest.approx(fn(low, mask).item(), abs=ATOL)
    if name == "kd_teacher":  # the teacher side is detached
        assert not loss.requires_grad
    else:
        loss.backward()
        assert (high.grad[~mask] == 0).all() and high.grad[mask].abs().sum() > 0
    assert (L.masked_log_softmax(high, mask).exp()[~mask] == 0).all()
    # exactly 0 whatever the valid scores, even below any finite fill value such as -1e9
    p = L.masked_log_softmax(torch.tensor([[-1e30, 5.0]]), torch.tensor([[True, False]])).exp()
    assert p.tolist() == [[1.0, 0.0]]


# ---------------------------------------------------------------- gradients
def gradcheck_cases():
    """name -> (loss function, float64 inputs that need a gradient); masks ragged."""
    gen = torch.Generator().manual_seed(9)
    rnd = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()
    t, mask, pos = rnd(3, 5).detach(), make_mask("ragged", 3, 5, gen), torch.tensor([0, 1, 0])
    teacher, s_mask, t_mask = rnd(2, 5, 4).detach(), make_mask("ragged", 2, 3, gen), make_mask("ragged", 2, 5, gen)
    return {
        "contrastive": (lambda s: L.contrastive_loss(s, pos, mask, 0.5)[0], (rnd(3, 5),)),
        "rank": (lambda s: L.rank_loss(s, mask, 0.7), (rnd(3, 5),)),
        "qg_rank": (lambda s, nll: L.qg_rank_loss(s, nll, mask, 0.7, 0.5), (rnd(3, 5), rnd(()))),
        "kd": (lambda s: L.kd_loss(s, t, mask, 0.5, 2.0), (rnd(3, 5),)),
        "align_dist": (lambda s: L.align_dist_loss(t, s, mask, 0.5), (rnd(3, 5),)),
        "align_emb": (lambda e_q, e_qg: L.align_emb_loss(e_q, e_qg, 0.5), (rnd(4, 3), rnd(4, 3))),
        "token_kd": (lambda st: L.token_kd_loss(st, s_mask, teacher, t_mask), (rnd(2, 3, 4),)),
    }


@pytest.mark.parametrize("name", list(gradcheck_cases()))
def test_gradcheck_float64(name):
    fn, inputs = gradcheck_cases()[name]
    assert torch.autograd.gradcheck(fn, inputs)


# ---------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tau", [1.0, 0.05])
def test_large_scores_stay_finite_in_low_precision(dtype, tau):
    gen = torch.Generator().manual_seed(10)
    big = lambda *shape: (torch.randn(*shape, generator=gen).sign() * 1e4 + torch.randn(*shape, generator=gen))
    s, t = big(4, 6).to(dtype), big(4, 6).to(dtype)
    mask = make_mask("random", 4, 6, gen)
    pos = torch.zeros(4, dtype=torch.long)
    fns = [lambda s: L.contrastive_loss(s, pos, mask, tau)[0], lambda s: L.rank_loss(s, mask, tau),
           lambda s: L.kd_loss(s, t, mask, tau, tau), lambda s: L.align_dist_loss(t, s, mask, tau)]
    for fn in fns:
        x = s.clone().requires_grad_()
        loss = fn(x)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        # computed in float32 internally: equals the float64 loss of the same (rounded) inputs
        ref = fn(s.double())
        assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-3)
    st, valid = big(2, 3, 4).to(dtype).requires_grad_(), lambda *shape: torch.ones(*shape, dtype=torch.bool)
    tok = L.token_kd_loss(st, valid(2, 3), big(2, 5, 4).to(dtype), valid(2, 5))
    tok.backward()
    assert torch.isfinite(tok) and torch.isfinite(st.grad).all()
    e = torch.randn(4, 8, generator=gen).to(dtype).requires_grad_()
    emb = L.align_emb_loss(e, e.detach() + 0.1, tau=0.01)
    emb.backward()
    assert torch.isfinite(emb) and torch.isfinite(e.grad).all()


# ---------------------------------------------------------------- error paths
def test_empty_mask_row_raises_instead_of_nan():
    s = torch.randn(3, 4)
    empty = torch.ones(3, 4, dtype=torch.bool)
    empty[1] = False
    pos = torch.zeros(3, dtype=torch.long)
    calls = [lambda: L.contrastive_loss(s, pos, empty), lambda: L.rank_loss(s, empty),
             lambda: L.kd_loss(s, s, empty), lambda: L.align_dist_loss(s, s, empty),
             lambda: L.qg_rank_loss(s, torch.tensor(1.0), empty),
             lambda: L.token_kd_loss(torch.randn(3, 4, 2), empty, torch.randn(3, 4, 2), torch.ones(3, 4).bool()),
             lambda: L.token_kd_loss(torch.randn(3, 4, 2), torch.ones(3, 4).bool(), torch.randn(3, 4, 2), empty)]
    for call in calls:
        with pytest.raises(ValueError, match=r"rows \[1\] have no valid"):
            call()


def test_bad_masks_raise():
    s = torch.randn(3, 4)
    with pytest.raises(ValueError, match="bool"):
        L.rank_loss(s, torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        L.kd_loss(s, s, torch.ones(3, 5, dtype=torch.bool))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 1] = False
    with pytest.raises(ValueError, match="own positive"):
        L.contrastive_loss(s, torch.tensor([0, 0, 1]), mask)
    mask[2, 0] = False
    with pytest.raises(ValueError, match="column 0"):
        L.rank_loss(s, mask)


# ---------------------------------------------------------------- matched teacher temperature
def ref_entropy(scores, mask, tau):
    s, m = rows(scores, mask)
    total = 0.0
    for row, valid in zip(s, m):
        lp = ref_log_softmax(row, valid, tau)
        total -= sum(math.exp(x) * x for x in lp if x is not None)
    return total / len(s)


@pytest.mark.parametrize("masked", [False, True])
def test_matched_temperature_equalises_entropy(masked):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(20, 9, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(20, 9, generator=g, dtype=torch.float64) * 0.2   # a flat teacher: needs tau < 1
    mask = torch.rand(20, 9, generator=g) > 0.3 if masked else None
    if masked:
        mask[:, 0] = True
    assert L.mean_entropy(student, mask, 2.0) == pytest.approx(ref_entropy(student, mask, 2.0), abs=ATOL)
    tau = L.matched_temperature(teacher, student, mask, tau_s=2.0)
    assert tau < 1
    assert ref_entropy(teacher, mask, tau) == pytest.approx(ref_entropy(student, mask, 2.0), abs=1e-6)
    # a teacher that is the student times c needs tau_s * c
    assert L.matched_temperature(student * 5, student, mask, tau_s=2.0) == pytest.approx(10.0, rel=1e-6)
    # every candidate tied: no temperature sharpens it, the bisection ends at its lower bound
    assert L.matched_temperature(torch.zeros(3, 4), torch.randn(3, 4, generator=g), lo=0.01) == pytest.approx(0.01)


def test_standardize_by_hand_keeps_order_and_zeroes_a_constant_row():
    t = torch.tensor([[1.0, 2.0, 3.0], [-4.0, -4.0, -4.0], [10.0, 0.0, 5.0]])
    z = L.standardize(t)
    assert torch.allclose(z[0], torch.tensor([-1.0, 0.0, 1.0]))          # mean 2, sd 1 (n - 1 in the sd)
    assert torch.equal(z[1], torch.zeros(3))
    assert torch.allclose(z[2], torch.tensor([1.0, -1.0, 0.0]))          # mean 5, sd 5
    x = torch.randn(50, 9, generator=torch.Generator().manual_seed(0)) * 7 + 3
    z = L.standardize(x)
    assert torch.equal(z.argsort(1), x.argsort(1))
    assert torch.allclose(z.mean(1), torch.zeros(50), atol=1e-6) and torch.allclose(z.std(1), torch.ones(50))
