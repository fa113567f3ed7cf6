"""Training many runs at once: one compiled program, ``jax.vmap`` over runs.

A run's recipe splits into **array** hyperparameters (``Hyper``: lr, weight decay, eps, step
size, beta, and 0/1 flags for adversarial training, the eps ramp, crop, flip and EMA) and
**static** settings (``Static``: the adversarial loss family, optimiser, schedule shape,
epochs, batch size, attack steps, ramp length, EMA decay). Runs with equal static settings (and
so equal parameter shapes: the model is the experiment's) form a group; the group's
``robustjax.train.train_step`` is vmapped over a stacked ``TrainState``, stacked ``Hyper``s and
per-run PRNG keys. On/off flags act by arithmetic that is exact for 0 and 1::

    loss = a * adversarial_loss + (1 - a) * clean_ce        # a = 0: standard training (*)
    eps_t = where(ramp, eps_ramp(eps)(t), eps)
    x = random_crop_flip(key, x, crop, flip)                # crop = flip = 0: x unchanged
    evaluated = where(ema, ema_params, params)               # the chain always holds an EMA

(* only in a group that holds standard runs, ``Static.mixed``; on the CPU standard runs get
their own group, see ``group_runs``), so a group run equals the same recipe trained alone by
``robustjax.train.fit`` with the ordinary loss and optax chain (``reference_loss`` /
``reference_optimizer``, what ``train_reference`` runs) to float32 rounding; ``tests/test_experiments_vectorised.py``
checks it. Batches are shared when every run of a group has the same seed (the data order is
``shuffle_seed = seed + epoch``, as in ``fit``); otherwise each run gets its own.

Keys of a run with seed ``s``: init ``PRNGKey(s)``; training ``fold_in(PRNGKey(s), 1)``, folded
with the step and split into augmentation and attack keys; evaluation ``fold_in(PRNGKey(s),
2)``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from robustjax import parallel, train
from robustjax.data import batches
from robustjax.experiments.augment import random_crop_flip
from robustjax.experiments.spec import Recipe
from robustjax.kernels import use_onednn
from robustjax.train import schedules, sharding


class Hyper(NamedTuple):
    """Per-run array hyperparameters (float32 scalars; ``[R]`` when stacked)."""

    lr: jax.Array
    weight_decay: jax.Array
    eps: jax.Array
    step_size: jax.Array
    beta: jax.Array
    adversarial: jax.Array  # 1: the adversarial loss, 0: clean cross-entropy
    eps_ramp: jax.Array
    crop: jax.Array
    flip: jax.Array
    ema: jax.Array


@dataclasses.dataclass(frozen=True)
class Static:
    """What one compiled group program is specialised to (hashable)."""

    loss: Optional[str]  # the adversarial family of the group; None: no run attacks
    optimizer: str
    lr_schedule: str
    momentum: float
    epochs: int
    batch_size: int
    attack_steps: int
    ramp_warmup_epochs: float
    ramp_epochs: float
    ema_decay: float
    # True when standard runs were merged into an adversarial group: the loss then mixes
    # the clean CE in by the per-run weight (otherwise it would be a wasted pass)
    mixed: bool = False


def hyper_of(recipe: Recipe) -> Hyper:
    f = lambda v: np.float32(v)  # noqa: E731
    return Hyper(f(recipe.lr), f(recipe.weight_decay), f(recipe.eps), f(recipe.step_size),
                 f(recipe.beta), f(recipe.loss != "standard"), f(recipe.eps_ramp),
                 f(recipe.crop), f(recipe.flip), f(recipe.ema))


def static_key(recipe: Recipe) -> tuple:
    """The static settings other than the loss family (runs with equal keys may share)."""
    return (recipe.optimizer, recipe.lr_schedule, recipe.momentum, recipe.epochs,
            recipe.batch_size, recipe.attack_steps, recipe.ramp_warmup_epochs,
            recipe.ramp_epochs, recipe.ema_decay)


def group_runs(recipes: Sequence[Recipe], base_loss: str, merge_standard: Optional[bool] = None
               ) -> list[tuple[Static, list[int]]]:
    """Partition run indices into groups that one vmapped program trains.

    Runs group by ``static_key`` and adversarial family. With ``merge_standard``, ``standard``
    runs join the group of the base recipe's family when there is one (adversarial weight 0),
    else the first adversarial group with their static key; otherwise (and when there is no
    adversarial group) they form their own attack-free group. A merged standard run pays for
    the attack it ignores (vmap computes every run's attack), which only pays off where the
    group's program is not compute-bound: the default (``None``) merges on accelerators and
    not on the CPU.
    """
    if merge_standard is None:
        merge_standard = jax.default_backend() != "cpu"
    by_key: dict[tuple, dict[Optional[str], list[int]]] = {}
    for i, r in enumerate(recipes):
        fam = None if r.loss == "standard" else r.loss
        by_key.setdefault(static_key(r), {}).setdefault(fam, []).append(i)
    out = []
    for key, families in by_key.items():
        standard = families.pop(None, [])
        if standard and families and merge_standard:
            target = base_loss if base_loss in families else next(iter(families))
            families[target] = sorted(families[target] + standard)
        elif standard:
            families[None] = standard
        for fam, idx in families.items():
            mixed = fam is not None and any(recipes[i].loss == "standard" for i in idx)
            out.append((Static(fam, *key, mixed=mixed), idx))
    return out


def _ramp_steps(static, steps_per_epoch):
    return (int(round(static.ramp_warmup_epochs * steps_per_epoch)),
            int(round(static.ramp_epochs * steps_per_epoch)))


def _adversarial_loss(family, eps, step_size, beta, steps):
    if family == "pgd_at":
        return train.pgd_at_loss(train.PGDATConfig(eps=eps, step_size=step_size, steps=steps))
    if family == "trades":
        return train.trades_loss(train.TRADESConfig(eps=eps, step_size=step_size, steps=steps,
                                                    beta=beta))
    if family == "mart":
        return train.mart_loss(train.MARTConfig(eps=eps, step_size=step_size, steps=steps,
                                                beta=beta))
    raise ValueError(f"unknown adversarial loss {family!r}")


# ---------------------------------------------------------------- one run, the ordinary way


def reference_loss(recipe: Recipe, steps_per_epoch: int) -> train.LossFn:
    """The run's loss built from ``robustjax.train``'s losses with Python-level choices."""
    warm, ramp = _ramp_steps(recipe, steps_per_epoch)
    eps = schedules.eps_ramp(recipe.eps, ramp, warm) if recipe.eps_ramp else recipe.eps
    base = (train.cross_entropy_loss if recipe.loss == "standard" else
            _adversarial_loss(recipe.loss, eps, recipe.step_size, recipe.beta,
                              recipe.attack_steps))
    augment = recipe.crop > 0 or recipe.flip

    def loss_fn(apply_fn, params, x, y, key, step):
        k_aug, k_adv = jax.random.split(key)
        if augment:
            x = random_crop_flip(k_aug, x, recipe.crop, int(recipe.flip))
        return base(apply_fn, params, x, y, k_adv, step)

    return loss_fn


def _lr(recipe_or_static, lr, total_steps):
    if recipe_or_static.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(lr, total_steps)
    return lr


def reference_optimizer(recipe: Recipe, total_steps: int) -> optax.GradientTransformation:
    """``chain([add_decayed_weights], adam|sgd(lr schedule), [parameter_ema])``."""
    lr = _lr(recipe, recipe.lr, total_steps)
    core = (optax.adam(lr) if recipe.optimizer == "adam" else
            optax.sgd(lr, momentum=recipe.momentum or None))
    parts = ([optax.add_decayed_weights(recipe.weight_decay)] if recipe.weight_decay else [])
    parts.append(core)
    if recipe.ema:
        parts.append(train.averaging.parameter_ema(recipe.ema_decay))
    return optax.chain(*parts)


def train_reference(apply_fn, params, recipe: Recipe, x, y, seed: int, progress=None,
                    mesh=None):
    """One run with ``robustjax.train.fit`` (the sequential baseline) -> (params, history);
    ``mesh``: data parallel over it (``robustjax.train.sharding``)."""
    spe = len(x) // recipe.batch_size
    return train.fit(apply_fn, params, reference_optimizer(recipe, spe * recipe.epochs), x, y,
                     epochs=recipe.epochs, batch_size=recipe.batch_size,
                     key=jax.random.fold_in(jax.random.PRNGKey(seed), 1),
                     loss_fn=reference_loss(recipe, spe), shuffle_seed=seed,
                     progress=progress, mesh=mesh)


# ---------------------------------------------------------------- many runs, one program


def vector_loss(static: Static, hyper: Hyper, steps_per_epoch: int) -> train.LossFn:
    """The group's loss for one run; ``hyper`` may be traced (inside ``vmap``)."""
    warm, ramp = _ramp_steps(static, steps_per_epoch)

    def eps(step):
        return jnp.where(hyper.eps_ramp > 0, schedules.eps_ramp(hyper.eps, ramp, warm)(step),
                         hyper.eps)

    adv = None if static.loss is None else _adversarial_loss(
        static.loss, eps, lambda step: hyper.step_size, lambda step: hyper.beta,
        static.attack_steps)

    def loss_fn(apply_fn, params, x, y, key, step):
        k_aug, k_adv = jax.random.split(key)
        x = random_crop_flip(k_aug, x, hyper.crop, hyper.flip)
        if adv is None:
            return train.cross_entropy_loss(apply_fn, params, x, y, None, step)
        robust = adv(apply_fn, params, x, y, k_adv, step)
        if not static.mixed:  # every run of the group is adversarial (weight 1)
            return robust
        a = hyper.adversarial
        clean = train.cross_entropy_loss(apply_fn, params, x, y, None, step)
        return a * robust + (1.0 - a) * clean

    return loss_fn


def vector_optimizer(static: Static, hyper: Hyper, total_steps: int):
    """``chain(add_decayed_weights(wd), adam|sgd(lr schedule), parameter_ema)``, traced hyper."""
    if static.lr_schedule == "cosine":
        unit = optax.cosine_decay_schedule(1.0, total_steps)
        lr = lambda step: hyper.lr * unit(step)  # noqa: E731
    else:
        lr = lambda step: hyper.lr  # noqa: E731
    core = (optax.adam(lr) if static.optimizer == "adam" else
            optax.sgd(lr, momentum=static.momentum or None))
    return optax.chain(optax.add_decayed_weights(hyper.weight_decay), core,
                       train.averaging.parameter_ema(static.ema_decay))


def _select_evaluated(state, hyper):
    averaged = train.evaluated_params(state)
    return jax.tree_util.tree_map(lambda a, p: jnp.where(hyper.ema > 0, a, p), averaged,
                                  state.params)


def stack(trees):
    """Per-run pytrees -> one pytree with a leading run axis (on the host: no compilation)."""
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree, n):
    tree = jax.device_get(tree)
    return [jax.tree_util.tree_map(lambda a: a[i], tree) for i in range(n)]


def train_group(apply_fn, params: Sequence, recipes: Sequence[Recipe], seeds: Sequence[int],
                x, y, static: Static, *, progress: Optional[Callable] = None, mesh=None):
    """Train ``len(recipes)`` runs in one vmapped program.

    Args:
      apply_fn: the model's ``apply_fn`` (shared: every run has the same architecture).
      params: per-run initial variables (same tree structure and shapes).
      recipes, seeds: per run; the recipes must agree on ``static`` (``group_runs``).
      x, y: training data (float32 NHWC in [0, 1], int32 labels).
      progress: ``progress(iterable, desc=..., total=...)`` around the epochs.
      mesh: shard every batch over this mesh's ``"batch"`` axis, runs' states replicated
        (``robustjax.train.sharding``: the same numbers as one device to float32 rounding).

    Returns ``(evaluated params per run, history)`` with ``history["loss"]`` ``[R][epochs]``
    (per-epoch mean losses, as ``fit``) and ``history["seconds"]``.
    """
    n = len(recipes)
    if not n or len(params) != n or len(seeds) != n:
        raise ValueError(f"train_group needs one params and seed per recipe, got "
                         f"{len(params)} params, {len(seeds)} seeds, {n} recipes")
    shapes = {str(jax.tree_util.tree_map(jnp.shape, p)) for p in params}
    if len(shapes) != 1:
        raise ValueError("train_group: the runs' parameter shapes differ; train them in "
                         "separate groups")
    spe = len(x) // static.batch_size
    if spe < 1:
        raise ValueError(f"batch_size {static.batch_size} is larger than the training set "
                         f"({len(x)} examples)")
    hyper = stack([hyper_of(r) for r in recipes])
    keys = stack([jax.random.fold_in(jax.random.PRNGKey(s), 1) for s in seeds])
    shared = len(set(seeds)) == 1
    init, step, select = _programs(apply_fn, static, spe, shared)
    state = init(stack(params), hyper)
    place = sharding.placement(mesh)
    if place is not None:
        place.check_batch_size(static.batch_size)
        state = jax.device_put(state, parallel.replicated_sharding(mesh))
        # the batch axis: axis 0 of a shared batch, axis 1 of per-run stacked batches
        rows = NamedSharding(mesh, PartitionSpec(place.axis) if shared
                             else PartitionSpec(None, place.axis))
    history = {"loss": [[] for _ in range(n)], "seconds": []}
    start = time.perf_counter()
    epochs = range(static.epochs)
    if progress is not None:
        epochs = progress(epochs, desc=f"{n} run(s)", total=static.epochs)
    for epoch in epochs:
        streams = {s: batches(x, y, static.batch_size, shuffle_seed=s + epoch,
                              drop_remainder=True) for s in sorted(set(seeds))}
        losses = []
        for _ in range(spe):
            per_seed = {s: next(it) for s, it in streams.items()}
            if shared:
                xb, yb = per_seed[seeds[0]]
            else:
                xb = np.stack([per_seed[s][0] for s in seeds])
                yb = np.stack([per_seed[s][1] for s in seeds])
            if place is None:
                state, loss = step(state, hyper, xb, yb, keys)
            else:
                xb, yb = jax.device_put((xb, yb), rows)
                with use_onednn(False):  # custom calls cannot be partitioned (train.sharding)
                    state, loss = step(state, hyper, xb, yb, keys)
            losses.append(loss)
        mean = np.mean(np.asarray(jax.device_get(losses)), axis=0)
        for i in range(n):
            history["loss"][i].append(float(mean[i]))
        history["seconds"].append(time.perf_counter() - start)
    return unstack(select(state, hyper), n), history


@functools.lru_cache(maxsize=32)
def _programs(apply_fn, static: Static, spe: int, shared: bool):
    """The group's jitted (init, step, select): cached, so a rerun in the same process (a
    resumed ablation, a notebook) does not compile again."""
    total = spe * static.epochs

    def init(p, h):
        return train.init_state(p, vector_optimizer(static, h, total))

    def one_step(state, h, xb, yb, key):
        step_key = jax.random.fold_in(key, state.step)
        return train.train_step(state, xb, yb, step_key, apply_fn=apply_fn,
                                optimizer=vector_optimizer(static, h, total),
                                loss_fn=vector_loss(static, h, spe))

    batch_axis = None if shared else 0
    return (jax.jit(jax.vmap(init)),
            jax.jit(jax.vmap(one_step, in_axes=(0, 0, batch_axis, batch_axis, 0))),
            jax.jit(jax.vmap(_select_evaluated)))
