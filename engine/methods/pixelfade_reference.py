"""The authors' PixelFade loop, kept literally: the speed baseline and the bit-exactness oracle.

It does what the reference's ``PixelFade.protect_image`` does, step for step: weight gradients
of the frozen model with a retained graph, a Python-bool constraint test read on the host every
step, boolean-index replacement; masks from its cumulative-then-XOR construction and noise from
``torch.randn_like`` on the global generator. Nothing protects with it: ``engine.methods.pixelfade`` is
the implementation, this is what it is measured and checked against (README, "What differs from
the paper's code"). Written apart from ``engine.methods.pixelfade`` so the check stays independent.
"""
from contextlib import nullcontext

import torch


def reference_masks(batch, shape, stages):
    """The reference's stage masks: cumulative 'still clean' masks from the global stream, then XOR."""
    total = batch * shape[0] * shape[1] * shape[2]
    clean = torch.ones(total)
    cumulative = []
    for _ in range(stages):
        candidates = torch.where(clean == 1)[0]
        count = int(total * (1 / stages))
        dropped = candidates[torch.randperm(len(candidates))[:count]]
        clean[dropped] = 0
        cumulative.append(clean.clone().bool())
    previous = torch.ones(total, dtype=torch.bool)
    stage_masks = []
    for mask in cumulative:
        stage_masks.append(torch.logical_xor(mask, previous).int())
        previous = mask
    return stage_masks


def reference_protect(model, data, masks, params, full_batch, noise=None, autocast_dtype=None):
    """One batch through the reference loop; ``noise`` defaults to ``randn_like(data)`` as there.

    ``masks`` are K flat stage masks for a full batch of ``full_batch`` images (int or bool); a
    smaller batch uses their first entries. ``autocast_dtype`` runs the model calls under
    autocast (the benchmark's reduced-precision baseline); None is the reference's fp32.
    """
    flags = [(param, param.requires_grad) for param in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(True)
    autocast = torch.autocast(data.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    try:
        protected = data.detach().clone()
        noise = torch.randn_like(data) if noise is None else noise
        lo, hi = torch.min(data), torch.max(data)
        momentum = torch.zeros_like(data)
        with autocast:
            target = model(data)
        condition = True
        for step in range(params.max_iter):
            if step < params.warmup_iter or condition:
                mask = masks[step % params.fade_num_iter]
                b, c, h, w = protected.shape
                flat = protected.reshape(-1)
                if b != full_batch:
                    mask = mask[: b * c * h * w]
                flat[mask == 1] = noise.reshape(-1)[mask == 1]
                protected = flat.reshape(b, c, h, w)
            protected = protected.detach().clone().requires_grad_(True)
            with autocast:
                output = model(protected)
            model.zero_grad()
            loss = torch.mean((output.float() - target.float()) ** 2)
            loss.backward(retain_graph=True)
            grad = protected.grad.data.clone()
            grad = grad / grad.abs().mean(dim=[1, 2, 3], keepdim=True)
            momentum = params.momentum * momentum + grad
            protected = protected.data.clone()
            if loss < params.epsilon and step < params.max_iter - 5:
                condition = True
                protected = protected - momentum * params.beta
            else:
                condition = False
                protected = protected - momentum * params.beta_temp
            protected = torch.clamp(protected, min=lo, max=hi)
        return protected.detach()
    finally:
        model.zero_grad(set_to_none=True)
        for param, flag in flags:
            param.requires_grad_(flag)
