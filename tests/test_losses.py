"""The AGW losses against their written formulas (as ReID-Survey defines them) on tiny float64 tensors."""
import math

import torch

from engine.reid_trainer import rescale_center_gradient
from modeling.losses import (AGWCriterion, CenterLoss, CrossEntropyLabelSmooth, TripletLoss,
                             WeightedRegularizedTriplet)

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
