"""auto_LiRPA's alpha-CROWN (``CROWN-Optimized``: the slopes of every ReLU optimised for the
output bound and, separately, for each intermediate bound) on the nets of
``tests/fixtures/certify_lirpa_reference.npz``, for ``tests/test_certify_alpha.py``.

``python benchmarks/certify_lirpa_alpha.py FIXTURE.npz OUT.npz`` (PyTorch venv with auto_LiRPA,
see benchmarks/results/certify.md): lower bounds of the margins ``f_y - f_j`` over the Linf
ball cut to [0, 1], with robustjax's ``AlphaCrownConfig`` settings: 20 Adam steps, learning
rate 0.1, no learning-rate decay (auto_LiRPA's defaults are 0.5 and 0.98); seconds per call.
"""

import json
import sys
import time

import numpy as np
import torch

from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from certify_lirpa_peer import build  # noqa: E402

STEPS, LR = 20, 0.1


def main(fixture, out):
    data = np.load(fixture)
    res = {}
    for arch in ("tiny", "tiny_bn"):
        view = {k[len(arch) + 1:]: data[k] for k in data.files if k.startswith(arch + "/")}
        torch.manual_seed(0)
        model = build(view)
        x = torch.tensor(np.asarray(view["x"])).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor(np.asarray(view["y"])).long()
        eps = float(view["eps"])
        eye = torch.eye(model(x[:1]).shape[-1])
        C = eye[y][:, None, :] - eye[None, :, :]
        opts = {"optimize_bound_args": {"iteration": STEPS, "lr_alpha": LR, "lr_decay": 1.0}}
        bm = BoundedModule(model, torch.zeros_like(x[:1]), bound_opts=opts)
        ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1),
                                 x_U=(x + eps).clamp(0, 1))
        t = time.perf_counter()
        lb, _ = bm.compute_bounds(x=(BoundedTensor(x, ptb),), C=C, method="CROWN-Optimized",
                                  bound_upper=False)
        res[f"{arch}/lirpa_alpha_crown"] = lb.detach().numpy()
        res[f"{arch}/lirpa_alpha_crown_s"] = np.float32(time.perf_counter() - t)
        print(json.dumps({"arch": arch, "sum": float(lb.sum()),
                          "s": float(res[f"{arch}/lirpa_alpha_crown_s"])}))
    np.savez_compressed(out, **res)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
