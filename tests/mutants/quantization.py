"""Plausible wrong answers to Chapter 11's exercises. Each must fail at least one public graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation (the helpers below are the
correct parts they share), so that the test that catches it catches that mistake.
"""


import torch


# == part C: GPTQ and AWQ ==
# -- 11.13 gptq_hessian ----------------------------------------------------------------------------------
def _hessian(inputs, samples_of, scale=2.0):
    n_in = inputs[0].shape[-1]
    H, n = torch.zeros(n_in, n_in), 0
    for x in inputs:
        b = samples_of(x)
        x = x.reshape(-1, n_in).float()
        H *= n / (n + b)
        n += b
        H += scale / n * x.T @ x
    return H


def hessian_counting_tokens_as_samples(inputs):
    return _hessian(inputs, lambda x: x.reshape(-1, x.shape[-1]).shape[0])


def hessian_counting_a_2d_tensor_as_its_rows(inputs):
    return _hessian(inputs, lambda x: x.shape[0])


def hessian_without_the_factor_two(inputs):
    return _hessian(inputs, lambda x: x.shape[0] if x.ndim == 3 else 1, scale=1.0)


def hessian_as_the_mean_of_batch_hessians(inputs):
    per_batch = [2 * x.reshape(-1, x.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()
                 / (x.shape[0] if x.ndim == 3 else 1) for x in inputs]
    return sum(per_batch) / len(per_batch)


# -- 11.14 gptq_quantize ---------------------------------------------------------------------------------
def _grid(w, maxq, symmetric):
    zero = torch.zeros(w.shape[0])
    lo, hi = torch.minimum(w.min(1).values, zero), torch.maximum(w.max(1).values, zero)
    if symmetric:
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
    flat = (lo == 0) & (hi == 0)
    lo, hi = lo.masked_fill(flat, -1.0), hi.masked_fill(flat, 1.0)
    scale = (hi - lo) / maxq
    z = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-lo / scale)
    return scale[:, None], z[:, None]


def _gptq(weight, hessian, bits=4, group_size=128, block_size=128, damp_percent=0.01, act_order=False,
          symmetric=False, *, update=True, damp=True, groups_from_original=False, undo_order=True, upper=True):
    maxq = 2 ** bits - 1
    W, H = weight.float().clone(), hessian.float().clone()
    n = W.shape[1]
    per_row = group_size in (None, -1)
    if per_row:
        scale, zero = _grid(W, maxq, symmetric)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    original = W.clone()
    if damp:
        H += damp_percent * torch.diag(H).mean() * torch.eye(n)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(H))
    Hinv = torch.linalg.cholesky(inverse, upper=upper)
    Q, scales, zeros = torch.zeros_like(W), [], []
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if not per_row and c % group_size == 0:
                scale, zero = _grid((original if groups_from_original else W)[:, c:c + group_size], maxq, symmetric)
                scales.append(scale)
                zeros.append(zero)
            w, d = W1[:, i], Hinv1[i, i]
            q = (scale * (torch.clamp(torch.round(w[:, None] / scale) + zero, 0, maxq) - zero)).flatten()
            Q[:, c] = q
            err = (w - q) / d
            if update:
                W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        if update:
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if per_row:
        scales, zeros, group_size = [scale], [zero], n
    g_idx = torch.arange(n, dtype=torch.int32) // group_size
    if act_order and undo_order:
        inv = torch.argsort(perm)
        Q, g_idx = Q[:, inv], g_idx[inv]
    return {"weight": Q, "scales": torch.cat(scales, 1), "zeros": torch.cat(zeros, 1), "g_idx": g_idx}


def gptq_without_updating_the_remaining_columns(*args, **kwargs):
    return _gptq(*args, **kwargs, update=False)


def gptq_without_damping(*args, **kwargs):
    return _gptq(*args, **kwargs, damp=False)


def gptq_with_groups_from_the_original_weights(*args, **kwargs):
    return _gptq(*args, **kwargs, groups_from_original=True)


def gptq_leaving_the_act_order_permutation(*args, **kwargs):
    return _gptq(*args, **kwargs, undo_order=False)


def gptq_with_the_lower_cholesky_factor(*args, **kwargs):
    return _gptq(*args, **kwargs, upper=False)


# -- 11.15 awq_search_scales -----------------------------------------------------------------------------
def _rtn(w, bits, group_size):
    g = w.reshape(-1, group_size)
    hi, lo = g.amax(1, keepdim=True), g.amin(1, keepdim=True)
    s = (hi - lo).clamp(min=1e-5) / (2 ** bits - 1)
    z = (-torch.round(lo / s)).clamp(0, 2 ** bits - 1)
    return ((torch.clamp(torch.round(g / s) + z, 0, 2 ** bits - 1) - z) * s).reshape(w.shape)


def _awq(weight, inputs, bits=4, group_size=128, n_grid=20, *, divide=True, duo=True, signed_mean=False,
         normalise_groups=True):
    W, x = weight.float(), inputs.float().reshape(-1, weight.shape[1])
    g = W.abs().reshape(-1, group_size)
    w_mean = (g / (g.amax(1, keepdim=True) + 1e-6) if normalise_groups else g).reshape(W.shape).mean(0)
    x_mean = (x if signed_mean else x.abs()).sum(0) / x.shape[0]
    ref = x @ W.T
    losses, best = [], None
    for k in range(n_grid):
        a = k / n_grid
        s = (x_mean.pow(a) / (w_mean.pow(1 - a) + 1e-4) if duo else x_mean.pow(a)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
        wq = _rtn(W * s, bits, group_size) / s if divide else _rtn(W * s, bits, group_size)
        loss = (ref - x @ wq.T).pow(2).sum().item() / ref.numel()
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, a, s)
    return {"scales": best[2], "ratio": best[1], "losses": losses}


def awq_without_dividing_by_the_scales(*args, **kwargs):
    return _awq(*args, **kwargs, divide=False)


def awq_from_the_activations_only(*args, **kwargs):
    return _awq(*args, **kwargs, duo=False)


def awq_with_the_signed_activation_mean(*args, **kwargs):
    return _awq(*args, **kwargs, signed_mean=True)


def awq_without_normalising_the_weight_groups(*args, **kwargs):
    return _awq(*args, **kwargs, normalise_groups=False)
# == end of part C ==


MUTANTS = {
    # == part C: GPTQ and AWQ ==
    "gptq_hessian": [hessian_counting_tokens_as_samples, hessian_counting_a_2d_tensor_as_its_rows,
                     hessian_without_the_factor_two, hessian_as_the_mean_of_batch_hessians],
    "gptq_quantize": [gptq_without_updating_the_remaining_columns, gptq_without_damping,
                      gptq_with_groups_from_the_original_weights, gptq_leaving_the_act_order_permutation,
                      gptq_with_the_lower_cholesky_factor],
    "awq_search_scales": [awq_without_dividing_by_the_scales, awq_from_the_activations_only,
                          awq_with_the_signed_activation_mean, awq_without_normalising_the_weight_groups],
    # == end of part C ==
}
