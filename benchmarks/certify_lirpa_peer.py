"""auto_LiRPA side of ``certify_lirpa.py``: runs in a PyTorch venv, never imported by robustjax.

``python certify_lirpa_peer.py NETS.npz METHOD BATCH REPEATS OUT.npz`` rebuilds the network of
``certify_nets.save`` in PyTorch (NCHW; the dense layer after the flatten gets its rows
permuted from NHWC order), bounds the margins ``C[i, j] = e_{y_i} - e_j`` (lower bounds only)
over the Linf ball ``eps`` around ``x`` cut to [0, 1] with auto_LiRPA, and prints one JSON line:
median seconds of ``REPEATS`` calls (1 if the first took over 20 s) after a first one, the
first call's seconds and the peak RSS. Methods: ``ibp`` (auto_LiRPA ``IBP``), ``crown_ibp`` (``CROWN-IBP``), ``crown``
(``CROWN``, ReLU lower slope "adaptive"), ``fastlin`` (``CROWN`` with ``relu: same-slope``:
lower slope = upper slope, Weng et al. 2018). Setup: see benchmarks/results/certify.md.
"""

import json
import resource
import sys
import time

import numpy as np
import torch
from torch import nn

from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

PEER_METHODS = {"ibp": ("IBP", {}), "crown_ibp": ("CROWN-IBP", {}), "crown": ("CROWN", {}),
                "fastlin": ("CROWN", {"relu": "same-slope"})}


def build(data):
    _, shape, layers = json.loads(str(data["arch"]))
    p = lambda i, n: torch.tensor(np.asarray(data[f"p_{i}_{n}"]))
    mods, (h, w, c), flat = [], shape, None
    for i, layer in enumerate(layers):
        if layer[0] == "conv":
            _, out, k, stride, pad = layer
            conv = nn.Conv2d(c, out, k, stride, pad)
            conv.weight.data = p(i, "kernel").permute(3, 2, 0, 1).contiguous()
            conv.bias.data = p(i, "bias")
            mods.append(conv)
            h, w, c = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1, out
        elif layer[0] == "bn":
            bn = (nn.BatchNorm2d if flat is None else nn.BatchNorm1d)(len(p(i, "scale")))
            bn.weight.data, bn.bias.data = p(i, "scale"), p(i, "bias")
            bn.running_mean.data, bn.running_var.data = p(i, "mean"), p(i, "var")
            mods.append(bn)
        elif layer[0] == "relu":
            mods.append(nn.ReLU())
        elif layer[0] == "flatten":
            mods.append(nn.Flatten())
            flat = (h, w, c)
        else:
            kernel = p(i, "kernel")  # [in, out]
            if isinstance(flat, tuple):  # rows in NHWC order -> NCHW order
                fh, fw, fc = flat
                kernel = kernel.reshape(fh, fw, fc, -1).permute(2, 0, 1, 3).reshape(
                    fh * fw * fc, -1)
            dense = nn.Linear(kernel.shape[0], kernel.shape[1])
            dense.weight.data, dense.bias.data = kernel.T.contiguous(), p(i, "bias")
            mods.append(dense)
            flat = kernel.shape[1]
    return nn.Sequential(*mods).eval()


def main(nets, method, batch, repeats, out):
    data = np.load(nets)
    torch.manual_seed(0)
    model = build(data)
    x = torch.tensor(np.asarray(data["x"][:batch])).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(np.asarray(data["y"][:batch])).long()
    eps = float(data["eps"])
    k = model(x[:1]).shape[-1]
    eye = torch.eye(k)
    C = eye[y][:, None, :] - eye[None, :, :]
    name, opts = PEER_METHODS[method]
    bm = BoundedModule(model, torch.zeros_like(x[:1]), bound_opts=opts)
    ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1),
                             x_U=(x + eps).clamp(0, 1))
    bx = BoundedTensor(x, ptb)

    def call():
        with torch.no_grad():
            lb, _ = bm.compute_bounds(x=(bx,), C=C, method=name, bound_upper=False)
        return lb

    t = time.perf_counter()
    lower = call()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats if first < 20 else 1):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    np.savez(out, lower=lower.numpy(), logits=model(x).detach().numpy())
    print(json.dumps({"median_s": float(np.median(times)), "first_s": first,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
