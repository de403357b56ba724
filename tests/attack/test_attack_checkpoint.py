"""engine/attack/checkpoint.py: the best epoch's weights (ties keep the earlier epoch, as the README says)."""
import math

import torch
from torch import nn

from engine.attack.checkpoint import BestWeights


def module_with(value):
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(value)
    return layer


def test_best_weights_keep_the_lowest_loss_and_the_earlier_of_two_equal_ones():
    best = BestWeights()
    assert best.epoch == -1 and best.loss == math.inf
    best.offer(0, 0.5, module_with(1.0))
    best.offer(1, 0.25, module_with(2.0))
    best.offer(2, 0.25, module_with(3.0))  # a tie: the earlier epoch stays
    best.offer(3, 0.75, module_with(4.0))
    assert (best.epoch, best.loss) == (1, 0.25)
    assert best.weights["weight"].item() == 2.0


def test_best_weights_are_a_copy_and_restore_from_their_state():
    best, layer = BestWeights(), module_with(1.0)
    best.offer(4, 0.1, layer)
    with torch.no_grad():
        layer.weight.fill_(9.0)
    restored = BestWeights()
    restored.load_state_dict(best.state_dict())
    assert (restored.epoch, restored.loss, restored.weights["weight"].item()) == (4, 0.1, 1.0)
