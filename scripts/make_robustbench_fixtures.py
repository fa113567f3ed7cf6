"""Make the RobustBench architecture fixtures under tests/fixtures/robustbench/ (needs torch).

The references are RobustBench's OWN model definitions: the architecture files of the PyPI
wheel (``robustbench/model_zoo/architectures/{wide_resnet,dm_wide_resnet,resnet,
utils_architectures}.py``), loaded by path so that the package's heavy ``__init__`` (timm,
gdown, ...) is never imported. Install it without dependencies next to torch::

    python3 -m venv /tmp/rbvenv && /tmp/rbvenv/bin/pip install torch==2.13.0 numpy
    /tmp/rbvenv/bin/pip install --no-deps robustbench==1.1.1
    .venv/bin/python scripts/make_robustbench_fixtures.py \
        --robustbench /tmp/rbvenv/lib/python3.11/site-packages/robustbench [--verify-full]

(any Python with torch runs the fixture part; ``--verify-full`` also needs robustjax.)

What it writes:

* ``manifest.json``: ``"parity"``: reduced configurations of each architecture (the
  RobustBench constructor call, the robustjax name and overrides, every state-dict key and
  shape, the weight seed). Weights are NOT stored: they are regenerated bit-exactly from the
  keys by ``make_zoo_fixtures.seeded_state_dict`` (numpy only), which the test calls too.
  ``"models"``: the full-size models' keys and shapes (meta device, nothing allocated), in the
  format of tests/fixtures/zoo/manifest.json, for tests/test_zoo_manifest.py.
  ``"dm_constants"``: the CIFAR-10/100 mean and std of ``dm_wide_resnet.py``.
* ``reference.npz``: ``x`` [3, 32, 32, 3] float32 pixels in [0, 1] (NHWC) and, per tag,
  ``<tag>/logits`` [3, 10] and ``<tag>/features`` computed by PyTorch in float64, eval mode.
  ``<tag>/input_grad`` [3, 32, 32, 3] for ``GRAD_TAGS``: d/dx of the summed cross-entropy
  at labels ``GRAD_LABELS``.
  ``wrn/logits_normalized``: the ``wrn`` weights behind RobustBench's ``normalize_model``
  (``NORM_MEAN``/``NORM_STD``), for the checkpoint-format tests.
* ``wrn_normalized.pth``: a real ``torch.save`` file as RobustBench-era training scripts
  write it: ``{"model_state_dict": {"module.normalize.mean", "module.normalize.std",
  "module.model.conv1.weight", ...}, "epoch": 7}`` (``nn.DataParallel`` around
  ``normalize_model(WideResNet(depth=10, widen_factor=1))``), tensors stored in float16 to
  stay small; ``wrn_normalized/logits`` is its float64 reference (of the float16 values).

``--verify-full`` additionally runs the full-size WRN-28-10 (36.5M parameters, seeded weights)
in PyTorch and in robustjax and prints the largest logit difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "robustbench"
sys.path.insert(0, str(ROOT / "scripts"))
from make_zoo_fixtures import seeded_state_dict  # noqa: E402  (numpy only)

SEED = 20261206
NORM_MEAN = (0.4914, 0.4822, 0.4465)
NORM_STD = (0.2471, 0.2435, 0.2616)
CIFAR_MEAN, CIFAR_STD = NORM_MEAN, NORM_STD
# input gradients of the cross-entropy (what every gradient attack uses) for these tags: the
# classic and the DeepMind padding of strided convolutions
GRAD_TAGS, GRAD_LABELS = ("wrn", "dm_wrn"), (1, 4, 7)
HEADS = ("fc", "logits", "linear")


def _arch(rb: pathlib.Path, name: str):
    path = rb / "model_zoo" / "architectures" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"rb_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dm_preact_small(dm, **kw):
    """DMPreActResNet-18 with one block per stage, built by its own ``_make_layer``."""
    m = dm.DMPreActResNet(num_classes=10, depth=18, activation_fn=dm.Swish, **kw)
    for i, (cin, cout, s) in enumerate(((64, 64, 1), (64, 128, 2), (128, 256, 2),
                                        (256, 512, 2))):
        setattr(m, f"layer_{i}", m._make_layer(cin, cout, 1, s, dm.Swish))
    return m


def parity_configs(rb):
    wrn, dm, res = _arch(rb, "wide_resnet"), _arch(rb, "dm_wide_resnet"), _arch(rb, "resnet")
    return {
        # tag: (constructor, its call as text, robustjax name, overrides)
        "wrn": (lambda: wrn.WideResNet(depth=16, widen_factor=2, sub_block1=True),
                "wide_resnet.WideResNet(depth=16, widen_factor=2, sub_block1=True)",
                "wrn_28_10", {"depth": 16, "width": 2}),
        "dm_wrn": (lambda: dm.DMWideResNet(num_classes=10, depth=16, width=2,
                                           activation_fn=dm.Swish),
                   "dm_wide_resnet.DMWideResNet(depth=16, width=2, activation_fn=Swish)",
                   "dm_wrn_70_16", {"depth": 16, "width": 2}),
        "dm_wrn_relu": (lambda: dm.DMWideResNet(num_classes=10, depth=10, width=1),
                        "dm_wide_resnet.DMWideResNet(depth=10, width=1)  # ReLU",
                        "dm_wrn_28_10", {"depth": 10, "width": 1, "activation": "relu"}),
        "preact": (lambda: res.PreActResNet(res.PreActBlock, [1, 2, 1, 1]),
                   "resnet.PreActResNet(PreActBlock, [1, 2, 1, 1])",
                   "preact_resnet18", {"layers": [1, 2, 1, 1]}),
        "preact_v2": (lambda: res.PreActResNet(res.PreActBlockV2, [1, 1, 1, 1],
                                               bn_before_fc=True),
                      "resnet.PreActResNet(PreActBlockV2, [1, 1, 1, 1], bn_before_fc=True)",
                      "preact_resnet18", {"layers": [1, 1, 1, 1], "out_shortcut": True,
                                          "bn_before_fc": True}),
        "dm_preact": (lambda: _dm_preact_small(dm),
                      "dm_wide_resnet.DMPreActResNet(depth=18, activation_fn=Swish) with "
                      "layer_i = _make_layer(..., num_blocks=1, ...)",
                      "dm_preact_resnet18", {"layers": [1, 1, 1, 1]}),
    }


def full_configs(rb):
    wrn, dm, res = _arch(rb, "wide_resnet"), _arch(rb, "dm_wide_resnet"), _arch(rb, "resnet")
    out = {}
    for d, w in ((28, 10), (34, 10), (34, 20), (70, 16)):
        out[f"wrn_{d}_{w}"] = (lambda d=d, w=w: wrn.WideResNet(depth=d, widen_factor=w,
                                                               sub_block1=True),
                               f"wide_resnet.WideResNet(depth={d}, widen_factor={w}, "
                               f"sub_block1=True)")
    for d, w in ((28, 10), (34, 20), (70, 16), (106, 16)):
        out[f"dm_wrn_{d}_{w}"] = (lambda d=d, w=w: dm.DMWideResNet(
            num_classes=10, depth=d, width=w, activation_fn=dm.Swish),
            f"dm_wide_resnet.DMWideResNet(depth={d}, width={w}, activation_fn=Swish)")
    for d, w in ((28, 10), (70, 16)):
        out[f"dm_wrn_{d}_{w}_cifar100"] = (lambda d=d, w=w: dm.DMWideResNet(
            num_classes=100, depth=d, width=w, activation_fn=dm.Swish, mean=dm.CIFAR100_MEAN,
            std=dm.CIFAR100_STD),
            f"dm_wide_resnet.DMWideResNet(num_classes=100, depth={d}, width={w}, "
            f"activation_fn=Swish, mean=CIFAR100_MEAN, std=CIFAR100_STD)")
    out["dm_preact_resnet18_cifar100"] = (
        lambda: dm.DMPreActResNet(num_classes=100, depth=18, activation_fn=dm.Swish,
                                  mean=dm.CIFAR100_MEAN, std=dm.CIFAR100_STD),
        "dm_wide_resnet.DMPreActResNet(num_classes=100, depth=18, activation_fn=Swish, "
        "mean=CIFAR100_MEAN, std=CIFAR100_STD)")
    out["preact_resnet18"] = (res.PreActResNet18, "resnet.PreActResNet18()")
    out["dm_preact_resnet18"] = (lambda: dm.DMPreActResNet(num_classes=10, depth=18,
                                                           activation_fn=dm.Swish),
                                 "dm_wide_resnet.DMPreActResNet(depth=18, activation_fn=Swish)")
    return out


def _head(model) -> str:
    return next(k for k in model.state_dict() if k.rsplit(".", 2)[-2] in HEADS
                and k.endswith(".weight"))


def _keys(model) -> list:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def _load_seeded(model, seed):
    sd = seeded_state_dict(_keys(model), seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return model.eval()


def _forward(model, x_nhwc, mean=None, std=None):
    """float64 logits and pooled features of an eval-mode model on NHWC [0, 1] pixels."""
    xt = torch.from_numpy(x_nhwc.astype(np.float64)).permute(0, 3, 1, 2)
    if mean is not None:
        xt = (xt - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
            std, dtype=torch.float64).view(1, 3, 1, 1)
    head = next(m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in HEADS)
    feats = []
    hook = head.register_forward_hook(lambda m, i, o: feats.append(i[0]))
    with torch.no_grad():
        logits = model.double()(xt)
    hook.remove()
    return logits.numpy(), feats[0].numpy()


def _input_grad(model, x_nhwc):
    """d/dx of the summed cross-entropy at labels ``GRAD_LABELS``, NHWC, float64."""
    xt = torch.from_numpy(x_nhwc.astype(np.float64)).requires_grad_(True)
    logits = model.double()(xt.permute(0, 3, 1, 2))
    torch.nn.functional.cross_entropy(logits, torch.tensor(GRAD_LABELS), reduction="sum"
                                      ).backward()
    return xt.grad.numpy()


def make(rb: pathlib.Path):
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    x = rng.random((3, 32, 32, 3)).astype(np.float32)
    arrays = {"x": x}
    parity = {}
    for i, (tag, (ctor, call, name, overrides)) in enumerate(parity_configs(rb).items()):
        torch.manual_seed(i)
        model = ctor()
        seed = SEED + i
        _load_seeded(model, seed)
        # DM models normalise inside (their own non-persistent mean/std buffers)
        dm = tag.startswith("dm_")
        mean, std = (None, None) if dm else (
            (CIFAR_MEAN, CIFAR_STD) if tag.startswith("preact") else (None, None))
        logits, feats = _forward(model, x, mean, std)
        arrays[f"{tag}/logits"], arrays[f"{tag}/features"] = logits, feats
        parity[tag] = {"robustbench": call, "model": name, "overrides": overrides,
                       "seed": seed, "keys": _keys(model)}
        print(f"{tag}: {sum(np.prod(s) for _, s in parity[tag]['keys']):,} values; "
              f"logits[0, :3] {logits[0, :3]}; |logits| max {np.abs(logits).max():.3g}")
        if tag in GRAD_TAGS:
            arrays[f"{tag}/input_grad"] = _input_grad(model, x)
        if tag == "wrn":
            ua = _arch(rb, "utils_architectures")
            wrapped = ua.normalize_model(model.float(), NORM_MEAN, NORM_STD).eval()
            arrays["wrn/logits_normalized"] = _forward(wrapped, x)[0]
    # the real torch.save file
    wrn = _arch(rb, "wide_resnet")
    torch.manual_seed(99)
    small = _load_seeded(wrn.WideResNet(depth=10, widen_factor=1), SEED + 99)
    ua = _arch(rb, "utils_architectures")
    wrapped = torch.nn.DataParallel(ua.normalize_model(small, NORM_MEAN, NORM_STD))
    sd16 = {k: v.half() if v.is_floating_point() else v
            for k, v in wrapped.state_dict().items()}
    path = OUT / "wrn_normalized.pth"
    torch.save({"model_state_dict": sd16, "epoch": 7}, path)
    wrapped.load_state_dict({k: v.float() for k, v in sd16.items()})
    arrays["wrn_normalized/logits"] = _forward(wrapped.module.eval(), x)[0]
    print(f"{path.name}: {path.stat().st_size:,} bytes, {len(sd16)} keys")
    np.savez_compressed(OUT / "reference.npz", **arrays)
    models = {}
    with torch.device("meta"):
        for name, (ctor, call) in full_configs(rb).items():
            m = ctor()
            models[name] = {"model": name, "source": f"robustbench 1.1.1 {call}",
                            "num_classes": m.state_dict()[_head(m)].shape[0],
                            "loadable": True, "keys": _keys(m)}
    dm = _arch(rb, "dm_wide_resnet")
    constants = {k: getattr(dm, k) for k in ("CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN",
                                             "CIFAR100_STD")}
    manifest = {"generator": "scripts/make_robustbench_fixtures.py",
                "torch_version": torch.__version__, "norm_mean": NORM_MEAN,
                "norm_std": NORM_STD, "dm_constants": constants, "parity": parity,
                "models": models}
    (OUT / "manifest.json").write_text(json.dumps(manifest) + "\n")
    print("manifest:", len(parity), "parity configs,", len(models), "full-size models")


def verify_full(rb: pathlib.Path):
    """Full WRN-28-10 (seeded weights): PyTorch float64 vs robustjax float32."""
    import jax
    import jax.numpy as jnp

    from robustjax.models import load

    wrn = _arch(rb, "wide_resnet")
    model = _load_seeded(wrn.WideResNet(depth=28, widen_factor=10, sub_block1=True), SEED - 1)
    x = np.random.default_rng(SEED).random((2, 32, 32, 3)).astype(np.float32)
    ref, _ = _forward(model, x)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    ours = load("wrn_28_10", sd)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(ours.apply_fn)(ours.params, jnp.asarray(x)))
    diff, scale = np.abs(got - ref).max(), np.abs(ref).max()
    print(f"full WRN-28-10 ({sum(v.size for v in sd.values()):,} values): max |logit diff| "
          f"{diff:.3g}, max |logit| {scale:.3g}, relative {diff / scale:.3g}")
    return diff


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robustbench", type=pathlib.Path, required=True,
                    help="the installed robustbench package folder")
    ap.add_argument("--verify-full", action="store_true")
    ap.add_argument("--no-fixtures", action="store_true")
    args = ap.parse_args()
    if not args.no_fixtures:
        make(args.robustbench)
    if args.verify_full:
        verify_full(args.robustbench)
