"""Peak memory of a PGD attack on ConvNeXt-T at batch 64: robustjax with and without
rematerialisation (``models.create(..., remat=True)``) and XLA:CPU's memory-saving schedule
(``runtime.memory_saving_schedule``), against PyTorch.

    PYTHONPATH=. python benchmarks/memory_pgd.py [--batch 64] [--steps 2]

Each configuration runs in its own subprocess. Reported: the resident set size (RSS) once the
model is built and a first PGD call has run and malloc's free memory is handed back
(``malloc_trim``; baseline: runtime, weights, compiled program), and the peak RSS during a
second PGD call (sampled every 2 ms by a thread; the first call,
which compiles, is not counted), as the increment over that baseline; for robustjax also XLA's
own count of the program's temporary buffers (``memory_analysis().temp_size_in_bytes``), and the
seconds per PGD step of the compiled call. PGD: Linf eps 4/255, step 1/255, ``--steps`` steps
on random images (one gradient's activations are live at a time, so the peak does not depend
on the number of steps). The PyTorch side is ConvNeXt-T written out in ``torch.nn`` (timm's
layout: LayerNorm over channels, depthwise 7x7, MLP ratio 4, layer scale; 28,589,128
parameters, checked), in eval mode with frozen parameters; its PGD takes
``torch.autograd.grad`` of the summed cross-entropy with respect to the images, as
torchattacks does. Both use all the machine's cores. Writes benchmarks/results/memory_pgd.md.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import threading
import time

EPS, STEP = 4 / 255, 1 / 255


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _trimmed_rss_mib() -> float:
    """RSS after handing malloc's free memory back to the system (glibc keeps freed heap memory
    mapped, so without this the RSS after a call already holds that call's peak)."""
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    return _rss_mib()


def _peak_during(fn) -> tuple[float, float]:
    """(peak RSS MiB while ``fn()`` runs, its seconds)."""
    peak, done = [_rss_mib()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    t = threading.Thread(target=sample)
    t.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    done.set()
    t.join()
    return max(peak[0], _rss_mib()), seconds


def run_robustjax(batch: int, steps: int, remat: bool, schedule: bool) -> dict:
    from robustjax import runtime

    if schedule:
        runtime.memory_saving_schedule()
    import jax
    import numpy as np

    from robustjax import attacks, models

    model = models.create("convnext_tiny", remat=remat)
    x = jax.random.uniform(jax.random.key(0), (batch, 224, 224, 3))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 1000)
    np.asarray(jax.jit(model.apply_fn)(model.params, x))
    cfg = attacks.PGDConfig(eps=EPS, step_size=STEP, steps=steps)
    pgd = jax.jit(lambda p, x, y, k: attacks.pgd(model.apply_fn, p, x, y, k, cfg).x_adv)
    compiled = pgd.lower(model.params, x, y, jax.random.key(2)).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    np.asarray(compiled(model.params, x, y, jax.random.key(2)))
    base = _trimmed_rss_mib()
    peak, seconds = _peak_during(lambda: np.asarray(compiled(model.params, x, y,
                                                             jax.random.key(3))))
    return {"baseline_mib": base, "peak_mib": peak, "xla_temp_mib": temp,
            "s_per_step": seconds / steps}


def _torch_convnext_tiny():
    import torch
    from torch import nn

    class LayerNorm2d(nn.LayerNorm):  # over channels of NCHW, as timm's
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

        def forward(self, x):
            h = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
            h = self.fc2(torch.nn.functional.gelu(self.fc1(h))) * self.gamma
            return x + h.permute(0, 3, 1, 2)

    dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
    layers = [nn.Conv2d(3, 96, 4, stride=4), LayerNorm2d(96, eps=1e-6)]
    for i, (d, n) in enumerate(zip(dims, depths)):
        if i:
            layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], d, 2, stride=2)]
        layers += [Block(d) for _ in range(n)]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.norm, self.fc = nn.LayerNorm(768, eps=1e-6), nn.Linear(768, 1000)

        def forward(self, x):
            return self.fc(self.norm(self.features(x).mean((2, 3))))

    return Net()


def run_torch(batch: int, steps: int) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    net = _torch_convnext_tiny().eval()
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 28_589_128, n_params  # timm's convnext_tiny
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 224, 224, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    with torch.no_grad():
        net(x)
    base = _rss_mib()

    def pgd(x0):
        xa = (x0 + torch.empty_like(x0).uniform_(-EPS, EPS)).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(net(xa), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xa)
            xa = torch.min(torch.max(xa.detach() + STEP * grad.sign(), x0 - EPS), x0 + EPS)
            xa = xa.clamp(0, 1)
        return xa

    pgd(x)
    base = _trimmed_rss_mib()
    peak, seconds = _peak_during(lambda: pgd(x))
    return {"baseline_mib": base, "peak_mib": peak, "xla_temp_mib": None,
            "s_per_step": seconds / steps}


CONFIGS = {  # name -> (library, remat, memory-saving schedule)
    "robustjax": ("robustjax", False, False),
    "robustjax, remat": ("robustjax", True, False),
    "robustjax, memory-saving schedule": ("robustjax", False, True),
    "robustjax, remat + memory-saving schedule": ("robustjax", True, True),
    "PyTorch 2.13": ("torch", None, None),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        lib, remat, schedule = CONFIGS[args.child]
        out = (run_torch(args.batch, args.steps) if lib == "torch"
               else run_robustjax(args.batch, args.steps, remat, schedule))
        print("RESULT " + json.dumps(out))
        return
    results = {}
    for name in CONFIGS:
        env = dict(os.environ, ROBUSTJAX_COMPILATION_CACHE="0")  # every row compiles its own
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--batch",
                               str(args.batch), "--steps", str(args.steps)],
                              capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(lines[-1][7:])
        print(name, results[name], flush=True)
    ref = results["PyTorch 2.13"]
    rows = []
    for name, r in results.items():
        inc = r["peak_mib"] - r["baseline_mib"]
        temp = "" if r["xla_temp_mib"] is None else f"{r['xla_temp_mib']:.0f}"
        rows.append(f"| {name} | {r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | {inc:.0f} | "
                    f"{inc / (ref['peak_mib'] - ref['baseline_mib']):.2f} | {temp} | "
                    f"{r['s_per_step']:.1f} |")
    text = "\n".join([
        "# Peak memory of PGD on ConvNeXt-T",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/memory_pgd.py --batch {args.batch} --steps "
        f"{args.steps}`; {platform.machine()}, {os.cpu_count()} cores, one subprocess per row "
        "(peak RSS sampled during the second, compiled call). Batch "
        f"{args.batch} of 224 x 224 x 3 images, Linf PGD eps 4/255, float32.",
        "",
        "| configuration | baseline RSS MiB | peak RSS MiB | increment MiB "
        "| increment / PyTorch's | XLA temp MiB | s per PGD step |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    out = pathlib.Path(__file__).parent / "results" / "memory_pgd.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
