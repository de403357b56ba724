"""IRRA's training objectives for a CLIP text-image model: SDM and the ID loss (anosorae/IRRA, ``model/objectives.py``).

* **SDM** (similarity distribution matching): for a batch of B images and B captions with identity
  labels, the scaled cosine similarities ``logit_scale * cos(text_i, image_j)`` are turned into a
  distribution per row by a softmax, p, and compared with the true-match distribution
  ``q_ij = [pid_i == pid_j] / #{k: pid_k == pid_i}`` through ``sum_j p_ij (log p_ij - log(q_ij + eps))``,
  KL(p || q) with IRRA's epsilon 1e-8 keeping the log finite where q is 0. Image-to-text and
  text-to-image rows both count: the loss is the mean over rows of one plus the mean of the other.
  IRRA's default ``logit_scale`` is 1 / temperature = 1 / 0.02 = 50, fixed (not learned).
* **ID loss** (instance loss): one linear classifier over the identities, shared by the image and
  the text feature (both unnormalised), cross-entropy of each, averaged.

IRRA also passes optional image ids to SDM (soft labels mixing pid and image id); its training
never does, and neither does this module. Its third loss, masked language modelling through a
cross-modal transformer, is not implemented here (module docstring of engine.train.text_image).
"""
import torch
import torch.nn.functional as F
from torch import nn

SDM_EPSILON = 1e-8
IRRA_TEMPERATURE = 0.02
# IRRA's classifier initialisation: weights N(0, 0.001^2), bias 0.
CLASSIFIER_STD = 0.001


def true_match_distribution(pids):
    """(B, B) rows ``[pid_i == pid_j] / (number of j with pid_j == pid_i)``: each row sums to 1."""
    pids = pids.reshape(-1, 1)
    matches = (pids == pids.t()).to(torch.get_default_dtype())
    return matches / matches.sum(dim=1, keepdim=True)


def _matching_term(logits, target, epsilon):
    """Mean over rows of sum_j p_ij (log p_ij - log(target_ij + epsilon)), p = softmax of the row."""
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * (log_p - torch.log(target + epsilon))).sum(dim=1).mean()


def sdm_loss(image_features, text_features, pids, logit_scale=1.0 / IRRA_TEMPERATURE, epsilon=SDM_EPSILON):
    """IRRA's SDM of B image and B text features (row i of each is the pair i) with identities ``pids``."""
    image = F.normalize(image_features, dim=1)
    text = F.normalize(text_features, dim=1)
    text_to_image = logit_scale * text @ image.t()
    target = true_match_distribution(pids).to(text_to_image.dtype)
    return _matching_term(text_to_image.t(), target, epsilon) + _matching_term(text_to_image, target, epsilon)


def id_loss(image_logits, text_logits, pids):
    """IRRA's ID loss: (CE(image logits) + CE(text logits)) / 2 with the identity labels."""
    return (F.cross_entropy(image_logits, pids) + F.cross_entropy(text_logits, pids)) / 2


def identity_classifier(embed_dim, num_classes):
    """The shared ID classifier, initialised as IRRA's."""
    classifier = nn.Linear(embed_dim, num_classes)
    nn.init.normal_(classifier.weight, std=CLASSIFIER_STD)
    nn.init.zeros_(classifier.bias)
    return classifier
