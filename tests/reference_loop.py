"""The reference's PixelFade loop written out literally, as the tests' oracle.

It does what the authors' ``PixelFade.protect_image`` does, step for step (weight gradients,
retained graph, a Python-bool constraint test, boolean-index replacement), on the CPU; the masks
come from its cumulative-then-XOR construction and the noise from ``torch.randn_like`` on the
global generator. Kept apart from the code under test so it stays an independent oracle.
"""
import torch


def literal_reference_masks(batch, shape, stages):
    """The reference's construction: cumulative 'still clean' masks, then XOR of neighbours."""
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
    result = []
    for mask in cumulative:
        result.append(torch.logical_xor(mask, previous).int())
        previous = mask
    return result


def literal_reference_protect(model, data, masks, params, full_batch):
    """What the reference loop does: weight gradients, retained graph, Python-bool condition."""
    for param in model.parameters():
        param.requires_grad_(True)
    protected = data.detach().clone()
    noise = torch.randn_like(data)
    lo, hi = torch.min(data), torch.max(data)
    momentum = torch.zeros_like(data)
    target = model(data)
    condition = True
    for step in range(params.max_iter):
        if step < params.warmup_iter or condition:
            mask = masks[step % params.fade_num_iter]
            b, c, h, w = protected.shape
            flat = protected.view(-1)
            if b != full_batch:
                mask = mask[: b * c * h * w]
            flat[mask == 1] = noise.view(-1)[mask == 1]
            protected = flat.reshape(b, c, h, w)
        protected = protected.detach().clone().requires_grad_(True)
        output = model(protected)
        model.zero_grad()
        loss = torch.mean((output - target) ** 2)
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
