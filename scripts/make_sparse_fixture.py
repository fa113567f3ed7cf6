"""Writes tests/fixtures/sparse_reference.npz: torchattacks.JSMA on the digits MLP of
tests/attacks_b_models.py (weights saved with it), for test_attacks_sparse.py.

Run: ``PYTHONPATH=tests .venv/bin/python scripts/make_sparse_fixture.py`` (needs torch and
torchattacks, the bench extra; the tests do not).
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
import torchattacks

import attacks_b_models

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sparse_reference.npz"
N = 32


def main():
    x, y, ws, bs = attacks_b_models._trained_mlp()
    x, y = x[1200:1200 + N], y[1200:1200 + N]
    target = ((y + 3) % 10).astype(np.int32)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(ws[0].T))
        net[1].bias.copy_(torch.tensor(bs[0]))
        net[3].weight.copy_(torch.tensor(ws[1].T))
        net[3].bias.copy_(torch.tensor(bs[1]))
    net.eval()
    xt = torch.tensor(np.transpose(x, (0, 3, 1, 2)))          # NHWC -> NCHW (C = 1)
    atk = torchattacks.JSMA(net, theta=1.0, gamma=0.1)
    atk.set_mode_targeted_by_function(lambda images, labels: torch.tensor(target).long())
    adv = atk(xt, torch.tensor(y).long())
    with torch.no_grad():
        pred = net(adv).argmax(1).numpy()
    x_adv = np.transpose(adv.numpy(), (0, 2, 3, 1)).astype(np.float32)
    np.savez_compressed(OUT, w0=ws[0], b0=bs[0], w1=ws[1], b1=bs[1], x=x, y=y, target=target,
                        x_adv_jsma=x_adv, success_jsma=pred == target)
    print(f"wrote {OUT}: torchattacks JSMA targeted success {np.mean(pred == target):.3f}, "
          f"changed features per example "
          f"{np.median((x_adv != x).reshape(N, -1).sum(1)):.0f} (median)")


if __name__ == "__main__":
    main()
