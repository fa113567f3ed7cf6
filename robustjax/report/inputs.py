"""What the report runs on: the model (a registry name with a checkpoint, a user's own factory,
or the embedded default) and evaluation data that fits it.

``resolve_model(name, checkpoint)`` returns the ``Model`` and an identity dict (what it is and a
hash of its weights and checkpoint) that keys the stored results of a resumable report.
``fit_data(x, y, spec, resize=...)`` checks the images against the model's input and, when asked,
resizes them and converts gray <-> RGB.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import sys
from typing import Optional

import numpy as np

from robustjax import validation
from robustjax.report.store import file_hash, params_hash
from robustjax.types import Model

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


def load_factory(target: str):
    """``"package.module:function"`` or ``"path/to/file.py:function"`` -> the function.

    Raises ValueError for a malformed target, an unknown module or a missing function, and
    TypeError if the attribute is not callable.
    """
    mod_name, sep, fn_name = target.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise ValueError(f"--model {target!r}: a model factory is written module:function, "
                         "e.g. mypackage.models:build or ./my_model.py:build")
    if mod_name.endswith(".py"):
        path = pathlib.Path(mod_name)
        if not path.is_file():
            raise ValueError(f"--model {target!r}: no file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not mod_name.startswith(e.name):
                raise  # the module exists but one of its own imports is missing
            raise ValueError(
                f"--model {target!r}: cannot import module {mod_name!r} ({e}). Put its folder "
                "on PYTHONPATH, install its package, or give the file: path/to/file.py:"
                f"{fn_name}") from None
    if not hasattr(module, fn_name):
        public = sorted(n for n in vars(module) if not n.startswith("_")
                        and callable(getattr(module, n)))
        raise ValueError(f"--model {target!r}: module {mod_name!r} has no function {fn_name!r}"
                         f"; its callables: {', '.join(public) or 'none'}")
    fn = getattr(module, fn_name)
    if not callable(fn):
        raise TypeError(f"--model {target!r}: {mod_name}.{fn_name} is a "
                        f"{type(fn).__name__}, not a function returning a robustjax Model")
    return fn


def model_from_factory(target: str, checkpoint: Optional[str] = None) -> Model:
    """Call a user's factory: ``fn()``, or ``fn(checkpoint)`` when a checkpoint is given."""
    fn = load_factory(target)
    model = fn(checkpoint) if checkpoint is not None else fn()
    if not isinstance(model, Model):
        raise TypeError(
            f"--model {target!r} returned a {type(model).__name__}, expected a robustjax Model "
            "(build one with robustjax.models.wrap(flax_module, variables, ModelSpec(...)), or "
            "robustjax.types.Model(apply_fn, params, spec))")
    return model


def _registry_model(name: str, checkpoint: Optional[str], log) -> Model:
    from robustjax import models
    from robustjax.models import loading

    if name not in models.MODELS:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(models.MODELS))}"
                       " (or module:function for your own Model factory)")
    if checkpoint is not None:
        return models.load(name, checkpoint)
    try:
        family = loading.family_of(name)
    except KeyError:
        family = None
    if family is not None and hasattr(family, "pretrained_path") and name in getattr(
            family, "PRETRAINED", (name,)):
        try:
            path = family.pretrained_path()
        except FileNotFoundError:
            path = None
        if path is not None:
            log(f"--model {name}: no --checkpoint, using the installed weights {path}")
            return models.load(name, path)
    log(f"--model {name}: no --checkpoint, evaluating randomly initialised weights")
    return models.create(name)


def resolve_model(model=None, checkpoint: Optional[str] = None, *, retrain: bool = False,
                  progress=None, log=print) -> tuple[Model, dict, dict]:
    """The model under test -> ``(model, identity, extras)``.

    ``model``: a ``Model``; a registry name (``robustjax models``); ``"module:function"`` for a
    factory returning a ``Model`` (called with the checkpoint path if one is given); or None
    for the embedded default. ``identity`` holds the name, the source and hashes of the weights
    and the checkpoint file; ``extras`` what sections may use (the default's training info).
    """
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file")
    extras: dict = {}
    how = "given"
    if isinstance(model, Model):
        pass
    elif model is None:
        if checkpoint is not None:
            raise ValueError("--checkpoint needs --model (the architecture name, or "
                             "module:function) that the weights belong to")
        from robustjax.models import default

        if not default.cache_path().exists() or retrain:
            log(f"training the embedded default model (cached at {default.cache_path()}) ...")
        model = default.embedded_default(retrain=retrain, progress=progress)
        extras["training_info"] = default.cached_info() or {}
        how = "embedded default"
    elif isinstance(model, str) and ":" in model:
        how = model
        model = model_from_factory(model, checkpoint)
    elif isinstance(model, str):
        how = model
        model = _registry_model(model, checkpoint, log)
    else:
        raise TypeError(f"model must be a Model, a registry name or 'module:function', got "
                        f"{type(model).__name__}")
    identity = {"model": how, "name": model.spec.name, "source": model.spec.source,
                "params": params_hash(model.params),
                "checkpoint": file_hash(checkpoint) if checkpoint is not None else None}
    return model, identity, extras


def _resize(x: np.ndarray, hw: tuple[int, int], batch: int = 64) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    fn = jax.jit(lambda a: jnp.clip(jax.image.resize(
        a, (a.shape[0],) + tuple(hw) + (a.shape[-1],), "linear", antialias=True), 0.0, 1.0))
    return np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + batch])))
                           for i in range(0, len(x), batch)])


def fit_data(x: np.ndarray, y: np.ndarray, spec, *, resize: bool = False,
             dataset: str = "the dataset") -> tuple[np.ndarray, np.ndarray, Optional[str]]:
    """Check (and with ``resize`` adapt) images for a model -> ``(x, y, note)``.

    ``x`` float32 ``[n, h, w, c]`` in [0, 1]. Without ``resize`` a size or channel mismatch is
    a ValueError that suggests ``--resize``; with it, gray images are repeated to RGB, RGB is
    turned into luma (BT.601) for a one-channel model, and the image is resized (bilinear,
    antialiased) to the model's height and width. ``note`` says what was done (or None).
    Labels outside the model's classes are a ValueError either way.
    """
    # NHWC floats, non-empty, finite, in [0, 1]; one integer label per image
    validation.check_images(x, name=dataset)
    validation.check_labels(y, batch=len(x), name=f"the labels of {dataset}")
    want = tuple(spec.input_shape)
    got = tuple(x.shape[1:])
    note = None
    if got != want:
        if not resize:
            raise validation.InputError(
                f"{dataset} has images of shape {got} (H, W, C) but model {spec.name!r} takes "
                f"{want}. Pass --resize (run_report(resize=True)) to resize them to "
                f"{want[0]}x{want[1]}" + (" and convert the channels" if got[-1:] != want[-1:]
                                           else "") + ", or choose a dataset of that shape.")
        if got[-1] != want[-1]:
            if got[-1] == 1 and want[-1] == 3:
                x = np.repeat(x, 3, axis=-1)
            elif got[-1] == 3 and want[-1] == 1:
                x = (x @ np.asarray(LUMA, np.float32))[..., None]
            else:
                raise validation.InputError(
                    f"--resize converts 1 <-> 3 channels only; {dataset} has {got[-1]} and "
                    f"model {spec.name!r} takes {want[-1]}")
        if tuple(x.shape[1:3]) != want[:2]:
            x = _resize(x, want[:2])
        note = (f"images resized from {got[0]}x{got[1]}x{got[2]} to {want[0]}x{want[1]}x"
                f"{want[2]} (bilinear, antialiased" + (", channels converted)" if got[-1] !=
                                                       want[-1] else ")"))
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise validation.InputError(
            f"{dataset} has labels in [{int(y.min())}, {int(y.max())}] but model {spec.name!r} "
            f"has {spec.num_classes} classes; evaluate it on data labelled in its own classes")
    return np.ascontiguousarray(x, np.float32), y, note


def check_model(model: Model, x: np.ndarray, y: np.ndarray) -> None:
    """Before any section runs: the model takes these images (NHWC, its channels and size) and
    its logits have classes for every label (``robustjax.validation``; traced, no compute)."""
    validation.check_model_inputs(model.apply_fn, model.params, x, y)
