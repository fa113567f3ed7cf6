"""auto_LiRPA bounds of a tiny ViT block, for ``tests/test_certify_vit.py`` (PyTorch venv only).

``python benchmarks/certify_lirpa_vit.py OUT.npz`` draws the weights of a one-block ViT
(4 tokens of 16 values, width 8, one attention head with a pre-LayerNorm, MLP 16 with
tanh-GELU, mean pooling, 3 classes; seed 0), 4 inputs in [0, 1], and stores the weights, the inputs,
PyTorch's logits and auto_LiRPA's lower/upper logit bounds over the Linf ball ``EPS`` for
IBP and CROWN. The same block is written in JAX in the test (``jax.nn.gelu``,
``jax.nn.softmax``, ``rsqrt``); here every operator is one auto_LiRPA 0.3 bounds:
LayerNorm as ``d * reciprocal(sqrt(relu(mean(d * d)) + 1e-5))``, GELU as
``0.5 h (1 + tanh(0.79788456 (h + 0.044715 h h h)))``, ``F.softmax`` (split into max, sub,
exp, sum, div; ``fixed_reducemax_index`` is needed for CROWN through the max).

auto_LiRPA 0.3 setup (see benchmarks/results/certify.md): its ``BoundSqrt`` upper line has
the slope ``-0.5 m^-1.5`` instead of the tangent's ``0.5 m^-0.5`` (unsound); this script
patches that method at import (``_sqrt_backward``) so the reference is a sound bound.
The MLP has no LayerNorm in front: with one there, auto_LiRPA 0.3's CROWN bound of that
LayerNorm's variance (it does not intersect with IBP's ``relu(.) >= 0``) goes below zero and
its sqrt gives NaN bounds for the logits (checked at eps 0.001 and 0.005).
"""

import sys

import numpy as np
import torch
from torch import nn

import auto_LiRPA.operators.nonlinear as nonlinear
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

EPS = 0.005
T, P, D, H, K = 4, 16, 8, 16, 3  # tokens, values per token, width, MLP width, classes


def _sqrt_backward(self, last_lA, last_uA, x):
    """auto_LiRPA 0.3's BoundSqrt.bound_backward with the upper tangent's slope corrected."""
    x_l = x.lower
    x_u = torch.max(x.upper, x.lower + 1e-8)
    sqrt_l, sqrt_u = torch.sqrt(x_l), torch.sqrt(x_u)
    k_l = (sqrt_u - sqrt_l) / (x_u - x_l).clamp(min=1e-8)
    b_l = sqrt_l - k_l * x_l
    x_m = (x_l + x_u) / 2
    sqrt_m = torch.sqrt(x_m)
    k_u = 0.5 / sqrt_m
    b_u = sqrt_m - k_u * x_m

    def side(last_A, k_pos, b_pos, k_neg, b_neg):
        if last_A is None:
            return None, 0
        pos, neg = last_A.clamp(min=0), last_A.clamp(max=0)
        return pos * k_pos + neg * k_neg, self.get_bias(pos, b_pos) + self.get_bias(neg, b_neg)

    lA, lb = side(last_lA, k_l, b_l, k_u, b_u)
    uA, ub = side(last_uA, k_u, b_u, k_l, b_l)
    return [(lA, uA), (None, None)], lb, ub


nonlinear.BoundSqrt.bound_backward = _sqrt_backward


def weights(seed=0):
    rng = np.random.default_rng(seed)
    n = lambda *s, scale=1.0: (rng.standard_normal(s) * scale / np.sqrt(s[0])).astype(np.float32)
    return {
        "embed": n(P, D), "embed_b": n(D, scale=0.1 * np.sqrt(D)), "pos": n(T, D),
        "ln1_g": (1 + 0.1 * rng.standard_normal(D)).astype(np.float32),
        "ln1_b": (0.1 * rng.standard_normal(D)).astype(np.float32),
        "q": n(D, D), "k": n(D, D), "v": n(D, D), "o": n(D, D),
        "ln2_g": (1 + 0.1 * rng.standard_normal(D)).astype(np.float32),
        "ln2_b": (0.1 * rng.standard_normal(D)).astype(np.float32),
        "fc1": n(D, H), "fc1_b": (0.1 * rng.standard_normal(H)).astype(np.float32),
        "fc2": n(H, D), "fc2_b": (0.1 * rng.standard_normal(D)).astype(np.float32),
        "head": n(D, K), "head_b": (0.1 * rng.standard_normal(K)).astype(np.float32),
    }


class Block(nn.Module):
    def __init__(self, w):
        super().__init__()
        for k, v in w.items():  # unperturbed parameters: constants to auto_LiRPA
            setattr(self, k, nn.Parameter(torch.tensor(v), requires_grad=False))

    def ln(self, z, g, b):
        d = z - z.mean(-1, keepdim=True)
        var = torch.relu((d * d).mean(-1, keepdim=True))  # as flax: max(0, var)
        return d * torch.reciprocal(torch.sqrt(var + 1e-5)) * g + b

    def forward(self, x):  # x [b, T, P]
        z = x.matmul(self.embed) + self.embed_b + self.pos
        n = self.ln(z, self.ln1_g, self.ln1_b)
        q, k, v = n.matmul(self.q), n.matmul(self.k), n.matmul(self.v)
        s = q.matmul(k.transpose(1, 2)) / np.sqrt(D)
        p = torch.softmax(s, dim=-1)
        z = z + p.matmul(v).matmul(self.o)
        h = z.matmul(self.fc1) + self.fc1_b  # no second LayerNorm: see the docstring
        h = 0.5 * h * (1 + torch.tanh(0.7978845608 * (h + 0.044715 * h * h * h)))
        z = z + h.matmul(self.fc2) + self.fc2_b
        return z.mean(1).matmul(self.head) + self.head_b


def main(out):
    torch.manual_seed(0)
    w = weights()
    x = np.random.default_rng(1).uniform(0, 1, (4, T, P)).astype(np.float32)
    net = Block(w).eval()
    xt = torch.tensor(x)
    logits = net(xt).detach().numpy()
    model = BoundedModule(net, torch.zeros(1, T, P),
                          bound_opts={"fixed_reducemax_index": True, "conv_mode": "matrix"})
    lo_box, hi_box = torch.clamp(xt - EPS, 0, 1), torch.clamp(xt + EPS, 0, 1)
    ptb = PerturbationLpNorm(norm=float("inf"), eps=EPS, x_L=lo_box, x_U=hi_box)
    bx = BoundedTensor(xt, ptb)
    res = {f"w_{k}": v for k, v in w.items()}
    res.update(x=x, eps=np.float32(EPS), torch_logits=logits)
    for method in ("IBP", "CROWN"):
        lo, hi = model.compute_bounds(x=(bx,), method=method)
        res[f"lirpa_{method.lower()}_lower"] = lo.detach().numpy()
        res[f"lirpa_{method.lower()}_upper"] = hi.detach().numpy()
        print(method, "mean width", float((hi - lo).mean()))
    # Soundness of the reference itself: how far samples fall outside its bounds (stored).
    xs = torch.clamp(xt[None] + (torch.rand(2000, *xt.shape) * 2 - 1) * EPS, 0, 1)
    ys = torch.stack([net(a) for a in xs]).detach().numpy()
    res["samples_min"], res["samples_max"] = ys.min(0), ys.max(0)
    for m in ("ibp", "crown"):
        below = float(np.max(res[f"lirpa_{m}_lower"] - ys.min(0)))
        above = float(np.max(ys.max(0) - res[f"lirpa_{m}_upper"]))
        print(m, "largest violation by samples: below", below, "above", above)
    np.savez_compressed(out, **res)


if __name__ == "__main__":
    main(sys.argv[1])
