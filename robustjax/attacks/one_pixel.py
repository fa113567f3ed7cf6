"""One-pixel attack (Su, Vargas & Sakurai 2019), a score-based L0 attack by differential evolution.

"One pixel attack for fooling deep neural networks", IEEE Trans. Evol. Comput. 23(5), 2019,
Sec. III: a candidate is ``d`` pixels, each a tuple ``(row, col, value per channel)``; a
population of ``P`` candidates evolves by DE/rand/1 without crossover (Eq. 2)::

    child_i = parent_r1 + F * (parent_r2 - parent_r3),   r1, r2, r3 distinct and != i

and a child replaces its parent when its fitness is better (or it is adversarial and the
parent is not). The fitness is the probability
of the true class (untargeted, minimised) or of the target class (targeted, maximised).
Positions start uniform on the image, values from N(128, 127) on the 0..255 scale (the paper's
initialisation), clipped to the box.

Everything is vectorised: the whole population of every example is scored in one forward
pass ``apply_fn(params, [b * P, H, W, C])`` per generation. ``queries`` counts forward passes
per example exactly: ``P`` for the initial population plus ``P`` per generation while the
example is not yet adversarial (the paper's early stop); never more than
``P * (1 + max_iter)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from robustjax.attacks._core import AttackResult, success_mask
from robustjax.attacks.l0 import l0_pixels
from robustjax.entry import attack_entry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class OnePixelConfig:
    """One-pixel attack settings; defaults from Su et al. 2019 (Sec. IV-A).

    Attributes:
      pixels: ``d``, the number of pixels a candidate changes (paper: 1, 3 and 5).
      popsize: ``P``, candidates per example (paper: 400).
      max_iter: generations of differential evolution (paper: 100).
      F: the scale of the difference vector (paper: 0.5).
      targeted: if True ``y`` holds target classes.
      strategy: ``"rand1"`` (the paper's DE/rand/1) or ``"best1"`` (DE/best/1: ``child_i =
        best + F (parent_r1 - parent_r2)``, the greedier variant scipy's and torchattacks'
        ``best1bin`` use, here without crossover as torchattacks' recombination=1 has it).
    """

    pixels: int = 1
    popsize: int = 400
    max_iter: int = 100
    F: float = 0.5
    targeted: bool = False
    strategy: str = "rand1"

    def __post_init__(self):
        if self.pixels < 1:
            raise ValueError(f"pixels must be >= 1, got {self.pixels}")
        if self.popsize < 4:
            raise ValueError(f"popsize must be >= 4 (DE/rand/1 draws three others), "
                             f"got {self.popsize}")
        if self.max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {self.max_iter}")
        if not self.F > 0:
            raise ValueError(f"F must be > 0, got {self.F}")
        if self.strategy not in ("rand1", "best1"):
            raise ValueError(f"strategy must be 'rand1' or 'best1', got {self.strategy!r}")


def perturb(x: Array, cand: Array) -> Array:
    """Write candidates into images: x [b, H, W, C], cand [b, P, d, 2 + C] -> [b, P, H, W, C].

    ``cand[..., 0]`` and ``cand[..., 1]`` are continuous row and column coordinates (floored),
    ``cand[..., 2:]`` the new pixel values in [0, 1].
    """
    b, h, w, c = x.shape
    rows = jnp.clip(jnp.floor(cand[..., 0]), 0, h - 1).astype(jnp.int32)
    cols = jnp.clip(jnp.floor(cand[..., 1]), 0, w - 1).astype(jnp.int32)
    idx = rows * w + cols                                          # [b, P, d]
    vals = jnp.clip(cand[..., 2:], 0.0, 1.0).astype(x.dtype)       # [b, P, d, C]

    def one(img, i, v):                                            # [h*w, c], [d], [d, c]
        return img.at[i].set(v)

    flat = jnp.broadcast_to(x.reshape(b, 1, h * w, c), (b, cand.shape[1], h * w, c))
    out = jax.vmap(jax.vmap(one))(flat, idx, vals)
    return out.reshape(b, cand.shape[1], h, w, c)


def _distinct_others(key, b: int, p: int) -> Array:
    """[3, b, P] indices r1, r2, r3: distinct, and different from the candidate's own index."""
    k1, k2, k3 = jax.random.split(key, 3)
    o1 = jax.random.randint(k1, (b, p), 1, p)          # offsets in 1..P-1, so never i itself
    o2 = jax.random.randint(k2, (b, p), 1, p - 1)
    o2 = o2 + (o2 >= o1)
    o3 = jax.random.randint(k3, (b, p), 1, p - 2)
    lo, hi = jnp.minimum(o1, o2), jnp.maximum(o1, o2)
    o3 = o3 + (o3 >= lo)
    o3 = o3 + (o3 >= hi)
    i = jnp.arange(p)[None, :]
    return jnp.stack([(i + o) % p for o in (o1, o2, o3)])


@attack_entry(gradient=False)
def one_pixel(apply_fn, params, x: Array, y: Array, key: Array,
              config: OnePixelConfig = OnePixelConfig()) -> AttackResult:
    """One-pixel attack: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult.

    ``x_adv`` differs from ``x`` in at most ``config.pixels`` pixels (all channels of a pixel
    may change) and lies in [0, 1]; ``norm`` is that L0 count in pixels; ``loss`` the final
    fitness (probability of the true class, or of the target when targeted; lower is better
    for the attacker untargeted, higher targeted); ``queries`` forward passes per example.

    Example::

        res = jax.jit(functools.partial(one_pixel, model.apply_fn,
                                        config=OnePixelConfig(pixels=3, popsize=100)))(
            model.params, x, y, jax.random.key(0))
    """
    cfg = config
    b, h, w, c = x.shape
    p, d = cfg.popsize, cfg.pixels
    lo = jnp.asarray([0.0, 0.0] + [0.0] * c, jnp.float32)
    hi = jnp.asarray([h, w] + [1.0] * c, jnp.float32)
    sign = 1.0 if cfg.targeted else -1.0            # DE maximises sign * prob(label)

    def evaluate(cand):                               # [b, P, d, 2+c] -> fitness, success
        xs = perturb(x, cand).reshape(b * p, h, w, c)
        logits = apply_fn(params, xs)
        prob = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        yy = jnp.repeat(y, p)
        fit = sign * jnp.take_along_axis(prob, yy[:, None], axis=-1)[:, 0]
        succ = success_mask(logits, yy, cfg.targeted)
        return fit.reshape(b, p), succ.reshape(b, p)

    k_pos, k_val, k_loop = jax.random.split(key, 3)
    pos = jax.random.uniform(k_pos, (b, p, d, 2)) * jnp.asarray([h, w], jnp.float32)
    val = jnp.clip(jax.random.normal(k_val, (b, p, d, c)) * (127.0 / 255.0) + 128.0 / 255.0,
                   0.0, 1.0)
    pop = jnp.concatenate([pos, val], axis=-1)
    fit, succ = evaluate(pop)
    queries = jnp.full((b,), p, jnp.int32)

    def cond(st):
        g, _, _, succ, _ = st
        return (g < cfg.max_iter) & ~jnp.all(jnp.any(succ, axis=1))

    def body(st):
        g, pop, fit, succ, queries = st
        active = ~jnp.any(succ, axis=1)                                    # [b]
        r = _distinct_others(jax.random.fold_in(k_loop, g), b, p)        # [3, b, P]
        pick = lambda ri: jnp.take_along_axis(pop, ri[..., None, None], axis=1)  # noqa: E731
        if cfg.strategy == "rand1":
            base = pick(r[0])
        else:  # the current best of each example's population
            base = jnp.take_along_axis(pop, jnp.argmax(fit, axis=1)[:, None, None, None], 1)
        child = jnp.clip(base + cfg.F * (pick(r[1]) - pick(r[2])), lo, hi)
        cfit, csucc = evaluate(child)
        # better fitness, or adversarial where the parent is not (fitness is a probability,
        # success an argmax: a child can fool the model with a higher true-class probability)
        better = active[:, None] & ((cfit > fit) | (csucc & ~succ))
        pop = jnp.where(better[..., None, None], child, pop)
        return (g + 1, pop, jnp.where(better, cfit, fit), jnp.where(better, csucc, succ),
                queries + p * active.astype(jnp.int32))

    _, pop, fit, succ, queries = jax.lax.while_loop(
        cond, body, (jnp.int32(0), pop, fit, succ, queries))
    # the answer: a successful candidate if there is one, else the fittest
    best = jnp.argmax(jnp.where(succ, jnp.inf, fit), axis=1)
    cand = jnp.take_along_axis(pop, best[:, None, None, None], axis=1)
    x_adv = perturb(x, cand)[:, 0]
    return AttackResult(
        x_adv=x_adv, success=jnp.take_along_axis(succ, best[:, None], axis=1)[:, 0],
        loss=sign * jnp.take_along_axis(fit, best[:, None], axis=1)[:, 0],
        norm=l0_pixels(x_adv - x), queries=queries)
