"""Make the reduced-size ResNet parity fixtures with timm (random weights, no download).

Needs torch + timm (e.g. /work/venv-timm). For each configuration below it builds
``timm.create_model(<name>, pretrained=False, **kwargs)``, randomises every BatchNorm (weight,
bias, running statistics -- timm's init makes them near-identity), runs the eval-mode model on
fixed inputs normalised with ImageNet mean/std and writes into tests/fixtures/resnet/:

  <tag>.pth or <tag>.safetensors   the state dict (both formats, to exercise both readers)
  <tag>_io.npz                     x float32 [2, 40, 40, 3] in [0, 1] (NHWC), logits [2, 10],
                                   features [2, C] (the pooled penultimate layer)

Run: PYTHONPATH=. /work/venv-timm/bin/python scripts/make_resnet_fixtures.py
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import timm
import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/resnet"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CHANNELS = (4, 8, 16, 32)
# tag -> (timm name, kwargs, robustjax name, robustjax overrides, state-dict format)
CONFIGS = {
    "basic": ("resnet18", dict(layers=(1, 2, 1, 1)), "resnet18", dict(layers=(1, 2, 1, 1)),
              "pth"),
    "bottleneck": ("resnet50", dict(layers=(1, 2, 1, 1)), "resnet50", dict(layers=(1, 2, 1, 1)),
                   "safetensors"),
}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for i, (tag, (timm_name, kw, rj_name, overrides, fmt)) in enumerate(CONFIGS.items()):
        torch.manual_seed(i)
        # timm's plain stem is always 64 wide (stem_width only affects deep stems)
        model = timm.create_model(timm_name, pretrained=False, num_classes=10, channels=CHANNELS,
                                  **kw).eval()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.2)
                    m.running_mean.normal_(0, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
        rng = np.random.RandomState(100 + i)
        x = rng.rand(2, 40, 40, 3).astype(np.float32)
        xt = torch.from_numpy((x - MEAN) / STD).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            feats = model.forward_head(model.forward_features(xt), pre_logits=True)
            logits = model(xt)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        path = OUT / f"{tag}.{fmt}"
        if fmt == "pth":
            torch.save(sd, path)
        else:
            save_file(sd, str(path))
        np.savez_compressed(OUT / f"{tag}_io.npz", x=x, logits=logits.numpy(),
                            features=feats.numpy())
        manifest[tag] = {"timm": timm_name, "timm_kwargs": {**kw, "channels": CHANNELS},
                         "model": rj_name, "overrides": {**overrides, "widths": CHANNELS},
                         "num_classes": 10, "checkpoint": path.name,
                         "timm_version": timm.__version__, "torch_version": torch.__version__}
        print(tag, path.name, path.stat().st_size, "bytes; logits", logits.numpy()[0, :3])
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
