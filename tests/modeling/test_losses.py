"""The AGW losses against their written formulas (as ReID-Survey defines them) on tiny float64 tensors."""
import math

import pytest
import torch

from engine.train.reid_recipe import rescale_center_gradient
from modeling.losses import (
    AGWCriterion,
    CenterLoss,
    CrossEntropyLabelSmooth,
    TripletLoss,
    WeightedRegularizedTriplet,
    soft_margin,
)

F64 = torch.float64
FEATS = torch.tensor([[0.0, 1.0], [0.5, 1.5], [2.0, 0.0], [2.5, -0.5], [1.0, 1.0], [-1.0, 0.5]], dtype=F64)
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def _dist(i, j):
    return math.sqrt(max(((FEATS[i] - FEATS[j]) ** 2).sum().item(), 1e-12))


def test_label_smoothed_cross_entropy_matches_formula():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], dtype=F64)
    targets = torch.tensor([0, 1])
    eps, k = 0.1, 3
    expected = 0.0
    for row, y in zip(logits, targets):
        logp = row - torch.logsumexp(row, 0)
        q = torch.full((k,), eps / k, dtype=F64)
        q[y] += 1 - eps
        expected += -(q * logp).sum().item()
    loss = CrossEntropyLabelSmooth(k, eps)(logits, targets)
    assert math.isclose(loss.item(), expected / 2, rel_tol=1e-12)


def test_weighted_regularized_triplet_softmax_weighting():
    n = len(LABELS)
    expected = 0.0
    for i in range(n):
        pos = [j for j in range(n) if LABELS[j] == LABELS[i]]
        neg = [j for j in range(n) if LABELS[j] != LABELS[i]]
        m_pos = max(_dist(i, j) for j in pos)
        w_pos = [math.exp(_dist(i, j) - m_pos) for j in pos]
        d_pos = sum(w * _dist(i, j) for w, j in zip(w_pos, pos)) / (sum(w_pos) + 1e-6)
        # stabiliser max_j(-d_ij * N_ij) = 0, since the masked entries are zeros
        w_neg = [math.exp(-_dist(i, j)) for j in neg]
        d_neg = sum(w * _dist(i, j) for w, j in zip(w_neg, neg)) / (sum(w_neg) + 1e-6)
        expected += math.log1p(math.exp(-(d_neg - d_pos)))
    loss = WeightedRegularizedTriplet()(FEATS, LABELS)
    assert math.isclose(loss.item(), expected / n, rel_tol=1e-9)


def test_hard_triplet_with_margin_and_soft_margin():
    n = len(LABELS)
    gaps = []
    for i in range(n):
        d_ap = max(_dist(i, j) for j in range(n) if LABELS[j] == LABELS[i])
        d_an = min(_dist(i, j) for j in range(n) if LABELS[j] != LABELS[i])
        gaps.append(d_ap - d_an)
    expected = sum(max(0.0, g + 0.3) for g in gaps) / n
    assert math.isclose(TripletLoss(0.3)(FEATS, LABELS).item(), expected, rel_tol=1e-9)
    soft = sum(math.log1p(math.exp(g)) for g in gaps) / n
    assert math.isclose(TripletLoss(None)(FEATS, LABELS).item(), soft, rel_tol=1e-9)


def test_center_loss_value():
    center = CenterLoss(3, 2).double()
    with torch.no_grad():
        center.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]], dtype=F64))
    expected = sum(((FEATS[i] - center.centers[LABELS[i]]) ** 2).sum().item() for i in range(6)) / 6
    expected += (3 - 1) * 1e-12  # the reference's clamped masked entries
    assert math.isclose(center(FEATS, LABELS).item(), expected, rel_tol=1e-12)


def test_center_update_uses_unweighted_gradient():
    weight, lr = 0.0005, 0.5
    criterion = AGWCriterion(3, 2, center_loss_weight=weight).double()
    with torch.no_grad():
        criterion.center.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]], dtype=F64))
    before = criterion.center.centers.detach().clone()
    optimizer = torch.optim.SGD(criterion.center.parameters(), lr=lr)
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    pooled = FEATS.clone().requires_grad_(True)
    criterion(logits, pooled, LABELS)["loss"].backward()
    rescale_center_gradient(criterion, weight)
    optimizer.step()
    # d/dc_j (1/B) sum_i ||f_i - c_{y_i}||^2 = -(2/B) sum_{i: y_i = j} (f_i - c_j)
    grad = torch.zeros_like(before)
    for i in range(6):
        grad[LABELS[i]] += -2.0 / 6 * (FEATS[i] - before[LABELS[i]])
    moved = before - criterion.center.centers.detach()
    assert torch.allclose(moved, lr * grad, rtol=1e-10, atol=1e-13)


def test_criterion_total_is_id_plus_triplet_plus_weighted_center():
    criterion = AGWCriterion(3, 2, weight_regularized_triplet=True, center_loss_weight=0.0005).double()
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    terms = criterion(logits, FEATS, LABELS)
    assert math.isclose(terms["loss"].item(), (terms["id"] + terms["triplet"] + 0.0005 * terms["center"]).item())
    assert isinstance(criterion.triplet, WeightedRegularizedTriplet)
    no_center = AGWCriterion(3, 2, weight_regularized_triplet=False, center_loss=False).double()
    assert isinstance(no_center.triplet, TripletLoss) and "center" not in no_center(logits, FEATS, LABELS)


def _softplus(x):
    """log(1 + exp(x)) in float64 without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _reference_wrt_float64(features, labels):
    """The WRT loss in float64 from the reference's formula (its stabilisers), the soft margin as a softplus."""
    n = len(labels)
    dist = [[math.sqrt(max(sum((a - b) ** 2 for a, b in zip(features[i], features[j])), 1e-12))
             for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        pos = [j for j in range(n) if labels[j] == labels[i]]
        neg = [j for j in range(n) if labels[j] != labels[i]]
        m_pos = max(dist[i][j] for j in pos)
        w_pos = [math.exp(dist[i][j] - m_pos) for j in pos]
        d_pos = sum(w * dist[i][j] for w, j in zip(w_pos, pos)) / (sum(w_pos) + 1e-6)
        w_neg = [math.exp(-dist[i][j]) for j in neg]  # max(-d * mask) = 0: the masked zeros
        d_neg = sum(w * dist[i][j] for w, j in zip(w_neg, neg)) / (sum(w_neg) + 1e-6)
        total += _softplus(d_pos - d_neg)
    return total / n


def test_weighted_regularized_triplet_is_finite_and_exact_at_large_distances():
    """Random-init features are hundreds to thousands apart: the float32 loss and its gradient stay finite
    and equal the reference's formula evaluated in float64 (which nn.SoftMarginLoss turned into inf)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(4)
    for scale in (1.0, 30.0, 1e3, 1e4):
        features = (torch.randn(16, 8, generator=generator) * scale).requires_grad_(True)
        loss = WeightedRegularizedTriplet()(features, labels)
        loss.backward()
        expected = _reference_wrt_float64(features.detach().double().tolist(), labels.tolist())
        assert math.isfinite(loss.item()) and torch.isfinite(features.grad).all()
        assert math.isclose(loss.item(), expected, rel_tol=1e-5), (scale, loss.item(), expected)
        assert scale < 1e3 or expected > 100.0  # far beyond where exp(-gap) overflows float32


def test_soft_margin_equals_torchs_where_finite_and_continues_it_beyond():
    gaps = torch.linspace(-79.0, 60.0, 1001)
    assert torch.equal(soft_margin(gaps), torch.nn.SoftMarginLoss()(gaps, torch.ones_like(gaps)))
    far = torch.tensor([-1e4, -90.0, -80.5], requires_grad=True)
    value = soft_margin(far)
    value.backward()
    assert value.item() == pytest.approx((1e4 + 90.0 + 80.5) / 3, rel=1e-6)
    assert torch.equal(far.grad, torch.full((3,), -1.0 / 3))
    assert math.isinf(torch.nn.SoftMarginLoss()(far.detach(), torch.ones(3)).item())  # what train_reid hit


def test_soft_margin_triplet_is_finite_at_large_distances():
    features = torch.tensor([[0.0], [500.0], [1.0], [300.0]])
    labels = torch.tensor([0, 0, 1, 1])
    loss = TripletLoss(None)(features, labels).item()

    def dist(i, j):
        return abs(features[i, 0].item() - features[j, 0].item())

    gaps = [max(dist(i, j) for j in range(4) if labels[j] == labels[i])
            - min(dist(i, j) for j in range(4) if labels[j] != labels[i]) for i in range(4)]
    assert math.isclose(loss, sum(_softplus(g) for g in gaps) / 4, rel_tol=1e-6)
