"""Report section: the model under test and its clean accuracy (logits stored per batch of 500,
so a long evaluation resumes after the last stored batch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.report.base import ReportContext, Section, markdown_table


def predict_logits(apply_fn, params, x, batch_size: int = 500,
                   cached=lambda start, compute: compute()) -> np.ndarray:
    """Logits for a whole dataset, in batches, one compilation per batch shape.

    ``cached(start, compute)`` may store each batch's logits (the report's resumable store).
    """
    fn = jax.jit(apply_fn)
    out = [cached(i, lambda i=i: np.asarray(fn(params, jnp.asarray(x[i:i + batch_size]))))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def section(ctx: ReportContext) -> Section:
    spec = ctx.model.spec
    batch = 500
    logits = predict_logits(
        ctx.model.apply_fn, ctx.model.params, ctx.x, batch,
        cached=lambda start, compute: ctx.cached_array(
            "clean", f"logits_{start}", {"start": start, "batch": batch}, compute))
    pred = logits.argmax(-1)
    correct = pred == ctx.y
    k = min(5, logits.shape[-1])
    top5 = np.any(np.argsort(-logits, -1)[:, :k] == ctx.y[:, None], -1)
    classes = np.unique(ctx.y)
    per_class = {int(c): float(correct[ctx.y == c].mean()) for c in classes}
    names = spec.class_names
    data = {
        "model": spec.name,
        "source": spec.source,
        "input_shape": list(spec.input_shape),
        "num_classes": spec.num_classes,
        "num_parameters": int(sum(np.size(a) for a in jax.tree_util.tree_leaves(
            ctx.model.params))),
        "examples": int(len(ctx.y)),
        "clean_accuracy": float(correct.mean()),
        "clean_top5_accuracy": float(top5.mean()),
        "per_class_accuracy": per_class,
    }
    data.update({f"training_{k}": v for k, v in ctx.extras.get("training_info", {}).items()
                 if isinstance(v, (int, float, str))})
    rows = [[names[c] if names else c, f"{per_class[c]:.3f}"] for c in per_class]
    md = "\n".join([
        f"Model `{spec.name}` ({data['num_parameters']:,} parameters, input "
        f"{tuple(spec.input_shape)}), weights: {spec.source}.",
        "",
        f"**Clean accuracy: {data['clean_accuracy']:.4f}** (top-{k}: "
        f"{data['clean_top5_accuracy']:.4f}) on {data['examples']} test examples.",
        "",
        markdown_table(["class", "accuracy"], rows),
    ])
    return Section("clean", "Model and clean accuracy", data, md)
