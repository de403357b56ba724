"""Losses of the AGW training recipe (ReID-Survey's modeling/layer), device-agnostic.

* ``CrossEntropyLabelSmooth``: q = (1 - eps) * onehot + eps / K, loss = mean_i sum_k -q_k log p_k.
* ``WeightedRegularizedTriplet`` (WRT): softmax-weighted furthest positive / closest negative on
  the batch's Euclidean distances, soft-margin loss log(1 + exp(-(d_n - d_p))), no margin; the
  soft margin stays finite at any distance (``soft_margin``).
* ``TripletLoss``: batch-hard mining (furthest positive, closest negative) with a margin ranking
  loss max(0, d_p - d_n + margin), or the soft margin when ``margin`` is None.
* ``CenterLoss``: (1/B) sum_i ||f_i - c_{y_i}||^2 with learnable centers (randn init); the masked
  entries of the reference's (B, C) distance matrix add (C - 1) * 1e-12 per row, kept here.
* ``AGWCriterion``: the weighted sum the reference trains with, returning every term.
"""
import torch
import torch.nn.functional as F
from torch import nn

CLAMP_MIN = 1e-12
CLAMP_MAX = 1e12


class CrossEntropyLabelSmooth(nn.Module):
    """Cross entropy against label-smoothed targets, averaged over the batch."""

    def __init__(self, num_classes, epsilon=0.1):
        super().__init__()
        self.num_classes = int(num_classes)
        self.epsilon = float(epsilon)

    def forward(self, logits, targets):
        log_probs = F.log_softmax(logits, dim=1)
        onehot = torch.zeros_like(log_probs).scatter_(1, targets.unsqueeze(1), 1.0)
        smoothed = (1.0 - self.epsilon) * onehot + self.epsilon / self.num_classes
        return (-smoothed * log_probs).mean(0).sum()


def euclidean_dist(x, y):
    """(m, n) Euclidean distances, sqrt(clamp(||x||^2 + ||y||^2 - 2 x.y, 1e-12)) as the reference."""
    squared = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1, keepdim=True).t()
    squared = torch.addmm(squared, x, y.t(), beta=1, alpha=-2)
    return squared.clamp(min=CLAMP_MIN).sqrt()


# Below this gap exp(-gap) overflows float32 (exp(88.7) is its largest value): log(1 + exp(-gap)) = -gap there.
_SOFT_MARGIN_OVERFLOW = -80.0


def soft_margin(gap):
    """mean log(1 + exp(-gap)): ``nn.SoftMarginLoss`` with targets 1, finite for any gap.

    ``nn.SoftMarginLoss`` evaluates exp(-gap) directly and returns inf once a gap is below about -88
    in float32, as the un-normalised distances of a randomly initialised backbone give (train_reid
    stopped at epoch 1). The same expression is kept for gaps >= -80, so values are bit-identical
    to the reference's wherever it is finite; below, log(1 + exp(-gap)) equals -gap to float precision.
    """
    safe = torch.log1p(torch.exp(-gap.clamp(min=_SOFT_MARGIN_OVERFLOW)))
    return torch.where(gap < _SOFT_MARGIN_OVERFLOW, -gap, safe).mean()


def _softmax_weights(dist, mask):
    """exp(d - max(d*mask)) * mask, normalised over each row (+1e-6), as the reference's helper.

    The maximum counts the masked-out zeros, as the reference's does: for the negatives' -d it is 0,
    so with every negative farther than ~14 the weights (and the closest-negative distance) fall
    towards 0. That is the reference's training signal, kept; every term stays finite.
    """
    max_v = torch.max(dist * mask, dim=1, keepdim=True)[0]
    diff = dist - max_v
    z = torch.sum(torch.exp(diff) * mask, dim=1, keepdim=True) + 1e-6
    return torch.exp(diff) * mask / z


class WeightedRegularizedTriplet(nn.Module):
    """AGW's weighted regularised triplet on un-normalised features."""

    def forward(self, features, targets):
        dist = euclidean_dist(features, features)
        same = targets.unsqueeze(0) == targets.unsqueeze(1)
        is_pos = same.to(dist.dtype)
        is_neg = (~same).to(dist.dtype)
        dist_ap = dist * is_pos
        dist_an = dist * is_neg
        weights_ap = _softmax_weights(dist_ap, is_pos)
        weights_an = _softmax_weights(-dist_an, is_neg)
        furthest_positive = torch.sum(dist_ap * weights_ap, dim=1)
        closest_negative = torch.sum(dist_an * weights_an, dim=1)
        return soft_margin(closest_negative - furthest_positive)


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al.), the reference's plain triplet (WRT off)."""

    def __init__(self, margin=0.3):
        super().__init__()
        self.margin = margin
        self.ranking_loss = nn.MarginRankingLoss(margin=margin) if margin is not None else None

    def forward(self, features, targets):
        dist = euclidean_dist(features, features)
        same = targets.unsqueeze(0) == targets.unsqueeze(1)
        dist_ap = dist.masked_fill(~same, float("-inf")).max(dim=1)[0]
        dist_an = dist.masked_fill(same, float("inf")).min(dim=1)[0]
        y = torch.ones_like(dist_an)
        if self.margin is not None:
            return self.ranking_loss(dist_an, dist_ap, y)
        return soft_margin(dist_an - dist_ap)


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016) with its centers as an ``nn.Parameter`` (num_classes, feat_dim)."""

    def __init__(self, num_classes, feat_dim):
        super().__init__()
        self.num_classes = int(num_classes)
        self.feat_dim = int(feat_dim)
        self.centers = nn.Parameter(torch.randn(self.num_classes, self.feat_dim))

    def forward(self, features, targets):
        if features.shape[1] != self.feat_dim:
            raise ValueError(f"center loss built for {self.feat_dim}-d features, got {features.shape[1]}-d")
        batch = features.shape[0]
        diff = features - self.centers.to(features.dtype)[targets]
        dist = diff.pow(2).sum(1).clamp(min=CLAMP_MIN, max=CLAMP_MAX)
        # The reference sums the whole masked (B, C) matrix after clamping: C - 1 entries of 1e-12 per row.
        return (dist.sum() + batch * (self.num_classes - 1) * CLAMP_MIN) / batch


def _at_least_float32(tensor):
    """Half-precision outputs of an autocast forward are scored in float32."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _switch(value):
    return value is True or str(value).lower() == "on"


class AGWCriterion(nn.Module):
    """xent(logits, y) + triplet(pooled, y) [+ CENTER_LOSS_WEIGHT * center(pooled, y)].

    Returns a dict of tensors: ``loss`` (the total to back-propagate), ``id``, ``triplet`` and,
    with MODEL.CENTER_LOSS on, ``center`` (unweighted).
    """

    def __init__(self, num_classes, feat_dim, weight_regularized_triplet=True, margin=0.3, center_loss=True,
                 center_loss_weight=0.0005, label_smooth_epsilon=0.1):
        super().__init__()
        self.id_loss = CrossEntropyLabelSmooth(num_classes, label_smooth_epsilon)
        self.triplet = WeightedRegularizedTriplet() if weight_regularized_triplet else TripletLoss(margin)
        self.center = CenterLoss(num_classes, feat_dim) if center_loss else None
        self.center_loss_weight = float(center_loss_weight)

    @classmethod
    def from_config(cls, cfg, num_classes, feat_dim):
        return cls(num_classes, feat_dim,
                   weight_regularized_triplet=_switch(cfg.MODEL.WEIGHT_REGULARIZED_TRIPLET),
                   margin=float(cfg.SOLVER.MARGIN), center_loss=_switch(cfg.MODEL.CENTER_LOSS),
                   center_loss_weight=float(cfg.SOLVER.CENTER_LOSS_WEIGHT))

    def forward(self, logits, pooled, targets):
        logits, pooled = _at_least_float32(logits), _at_least_float32(pooled)
        terms = {"id": self.id_loss(logits, targets), "triplet": self.triplet(pooled, targets)}
        total = terms["id"] + terms["triplet"]
        if self.center is not None:
            terms["center"] = self.center(pooled, targets)
            total = total + self.center_loss_weight * terms["center"]
        terms["loss"] = total
        return terms
