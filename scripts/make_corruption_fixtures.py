"""Writes tests/fixtures/corruptions_reference.npz: imagecorruptions-imaug outputs for the tests.

Run once (needs imagecorruptions-imaug, numba, OpenCV):
    PYTHONPATH=. python scripts/make_corruption_fixtures.py

Image: a 64 x 64 crop of scikit-image's ``chelsea`` (uint8). For every corruption and severity:
* deterministic corruptions: the reference output (uint8);
* corruptions whose randomness can be replayed: NumPy's global generator is seeded, the random
  draws the reference makes are reproduced in the same order and stored (flake field and angle
  for snow, plasma map for fog, texture index and crop for frost, uniform fields for elastic,
  liquid field for spatter, angle for motion blur), then the generator is re-seeded and the
  reference is run; the tests feed the stored draws to robustjax's deterministic parts;
* noises and glass blur: statistics of the (uint8) reference outputs over ``REPEATS`` seeds:
  mean and std of ``out - clean`` over all values, PSNR against the clean image, and the
  fraction of changed values.
"""

from __future__ import annotations

import pathlib

import cv2
import imagecorruptions
import numpy as np
import skimage.data
from imagecorruptions import corruptions as ref

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
REPEATS = 8
DETERMINISTIC = (
    "brightness",
    "contrast",
    "saturate",
    "pixelate",
    "jpeg_compression",
    "defocus_blur",
    "gaussian_blur",
    "zoom_blur",
)
STATISTICAL = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur")


def clean_image() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.chelsea()[60:124, 150:214])


def stats(clean: np.ndarray, out: np.ndarray) -> np.ndarray:
    d = out.astype(np.float64) - clean.astype(np.float64)
    mse = np.mean(d**2)
    psnr = 10 * np.log10(255.0**2 / mse)
    return np.array([d.mean(), d.std(), psnr, np.mean(d != 0), np.abs(d).mean()])


def frost_crop(h: int, w: int, rng_seed: int):
    """Replays frost's draws: texture index, then the crop corner of the rescaled texture."""
    np.random.seed(rng_seed)
    idx = np.random.randint(6)
    name = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"][idx]
    tex = cv2.imread(str(pathlib.Path(imagecorruptions.__file__).parent / "frost" / name))
    fh, fw = tex.shape[:2]
    scale = max(1.0, h / fh, w / fw) * 1.1
    nh, nw = int(np.ceil(fh * scale)), int(np.ceil(fw * scale))
    return idx, np.random.randint(0, nh - h), np.random.randint(0, nw - w)


def main():
    img = clean_image()
    h, w = img.shape[:2]
    data = {"clean": img}
    for s in range(1, 6):
        for name in DETERMINISTIC:
            data[f"{name}_{s}"] = imagecorruptions.corrupt(img, s, name)
        seed = 100 + s
        # motion blur: angle = U(-45, 45)
        np.random.seed(seed)
        data[f"motion_blur_{s}_angle"] = np.float32(np.random.uniform(-45, 45))
        np.random.seed(seed)
        data[f"motion_blur_{s}"] = imagecorruptions.corrupt(img, s, "motion_blur")
        # snow: field ~ N(mean, std) [H, W], then angle = U(-135, -45)
        c = [(0.1, 0.3), (0.2, 0.3), (0.55, 0.3), (0.55, 0.3), (0.55, 0.3)][s - 1]
        np.random.seed(seed)
        data[f"snow_{s}_field"] = np.random.normal(size=(h, w), loc=c[0], scale=c[1]).astype(
            np.float32
        )
        data[f"snow_{s}_angle"] = np.float32(np.random.uniform(-135, -45))
        np.random.seed(seed)
        data[f"snow_{s}"] = imagecorruptions.corrupt(img, s, "snow")
        # fog: one plasma fractal of side next_power_of_2(max(shape))
        decay = [2, 2, 1.7, 1.5, 1.4][s - 1]
        np.random.seed(seed)
        size = ref.next_power_of_2(int(max(img.shape)))
        data[f"fog_{s}_map"] = ref.plasma_fractal(mapsize=size, wibbledecay=decay).astype(
            np.float32
        )
        np.random.seed(seed)
        data[f"fog_{s}"] = imagecorruptions.corrupt(img, s, "fog")
        # frost: texture index and crop corner
        data[f"frost_{s}_crop"] = np.array(frost_crop(h, w, seed), np.int32)
        np.random.seed(seed)
        data[f"frost_{s}"] = imagecorruptions.corrupt(img, s, "frost")
        # elastic: dx field then dy field, uniform in +-0.005 H
        m = h * 0.005
        np.random.seed(seed)
        data[f"elastic_transform_{s}_ux"] = np.random.uniform(-m, m, size=(h, w)).astype(
            np.float32
        )
        data[f"elastic_transform_{s}_uy"] = np.random.uniform(-m, m, size=(h, w)).astype(
            np.float32
        )
        np.random.seed(seed)
        data[f"elastic_transform_{s}"] = imagecorruptions.corrupt(img, s, "elastic_transform")
        # spatter: liquid field ~ N(mean, std)
        c = [(0.65, 0.3)] * 4 + [(0.67, 0.4)]
        np.random.seed(seed)
        data[f"spatter_{s}_field"] = np.random.normal(
            size=(h, w), loc=c[s - 1][0], scale=c[s - 1][1]
        ).astype(np.float32)
        np.random.seed(seed)
        data[f"spatter_{s}"] = imagecorruptions.corrupt(img, s, "spatter")
        for name in STATISTICAL:
            outs = []
            for r in range(REPEATS):
                np.random.seed(1000 * s + r)
                kw = {"seed": 1000 * s + r} if name in ("glass_blur", "impulse_noise") else {}
                outs.append(stats(img, imagecorruptions.corrupt(img, s, name, **kw)))
            data[f"{name}_{s}_stats"] = np.mean(outs, axis=0)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "corruptions_reference.npz", **data)
    print("wrote", OUT / "corruptions_reference.npz", (OUT / "corruptions_reference.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
