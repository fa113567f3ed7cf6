"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML), as the reference ``AutoAttack`` class of
fra31/auto-attack defines its versions (``set_version``; checked against its code):

* ``standard``, Linf/L2: APGD-CE (1 run, 100 iterations), APGD-T (9 target classes, 1 run each),
  FAB-T (9 targets, 1 run each), Square (5,000 queries, p_init 0.8, schedule not rescaled).
  L1: APGD-CE with 5 restarts and APGD-T with 5 targets, both with the decreasing-eps schedule
  (``use_largereps``), then FAB-T (9 targets) and Square (5,000 queries, the L1 proposals of
  the reference's ``square.py``).
* ``plus``: APGD-CE and APGD-DLR (5 restarts each), FAB (untargeted, 5 restarts), Square,
  APGD-T (9 targets), FAB-T (9 targets; the reference forces 1 restart for FAB-T).
* ``rand`` (randomized defenses): APGD-CE and APGD-DLR, 1 run each, gradients averaged over 20
  draws (EOT; a robustjax randomized model draws from the key in its params).
* ``custom``: the attacks named in ``attacks`` with the reference constructor's defaults
  (APGD 5 restarts, FAB 5 restarts, 9 targets, 5,000 queries) unless overridden.

Cascade (as the reference): the clean accuracy first; then each attack runs only on the
examples still robust, in batches of ``batch_size``; an example counts as broken when the
returned point is misclassified (and inside the threat model); it then skips every later
attack. Every attack is one compiled program for its batch shape: with ``schedule="compact"``
(default, the reference's) the still-robust examples are gathered into equal batches of at most
``batch_size`` (rounded up to a multiple of 8, or to a power of two below 8, and padded, so an
attack that sees 173 examples runs one batch of 176, not 250, and one that sees 1 a batch of
1); with ``schedule="mask"`` the batches are the fixed slices of the data set and slices
without a robust example are skipped. With ``"compact"``, APGD-T also runs its targets one at a
time, each on the examples the earlier ones left robust, as the reference does
(``target_rounds``; its log lines then say ``apgd-t (target 2/9) - ...``); with ``"mask"`` one
program runs every target on the batch.
``benchmarks/results/autoattack.md`` compares them.

This function runs on the host (a loop over attacks and batches, like the reference); each
batch is one call of a jitted attack. Logging, resume and files belong to the caller:
``log(line)`` receives the reference's log lines, ``checkpoint(state)`` the state after every
batch, and ``resume=state`` continues from one (``robustjax.report.autoattack`` writes and
reads state files atomically). The same key and state give the same result as an
uninterrupted run.

Example::

    res = autoattack(model.apply_fn, model.params, x, y, jax.random.key(0),
                     AutoAttackConfig(eps=8 / 255, norm="linf", version="standard"), log=print)
    res.robust_accuracy, res.accuracy_after   # {'clean': .., 'apgd-ce': .., ...}
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import entry, validation
from robustjax.attacks import _core
from robustjax.attacks import autoattack_checks as checks
from robustjax.attacks.apgd import APGDConfig, APGDTConfig, apgd, apgd_t
from robustjax.attacks.fab import FABConfig, fab
from robustjax.attacks.square import SquareConfig, square

VERSIONS = ("standard", "plus", "rand", "custom")
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
SCHEDULES = ("compact", "mask")
_NORM_ALIASES = {"linf": "linf", "l2": "l2", "l1": "l1", "Linf": "linf", "L2": "l2", "L1": "l1",
                 "LINF": "linf", "inf": "linf"}
DISPLAY_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
    """AutoAttack settings. ``version`` fixes the attacks and their settings (module doc);
    the fields after ``attacks`` apply to ``version="custom"`` only (defaults: the reference
    constructor's). ``norm``: ``"linf"``, ``"l2"`` or ``"l1"`` (the reference's spellings
    ``"Linf"``, ``"L2"``, ``"L1"`` are accepted). ``batch_size``: examples per compiled batch
    (the reference's 250)."""

    eps: float = 8 / 255
    norm: str = "linf"
    version: str = "standard"
    attacks: Optional[tuple] = None
    batch_size: int = 250
    schedule: str = "compact"
    steps: int = 100
    apgd_restarts: int = 5
    fab_restarts: int = 5
    apgd_targets: int = 9
    fab_targets: int = 9
    n_queries: int = 5000
    eot_iter: int = 1
    loop: str = "auto"

    def __post_init__(self):
        if self.norm not in _NORM_ALIASES:
            raise ValueError(f"unknown norm {self.norm!r}; valid norms: linf, l2, l1 (or the "
                             "reference's Linf, L2, L1)")
        object.__setattr__(self, "norm", _NORM_ALIASES[self.norm])
        if self.version not in VERSIONS:
            raise ValueError(f"unknown version {self.version!r}; valid versions: "
                             f"{', '.join(VERSIONS)}")
        if self.version != "custom" and self.attacks is not None:
            raise ValueError(f"attacks={self.attacks!r} is only used with version='custom' "
                             f"(version {self.version!r} fixes its attacks)")
        if self.version == "custom":
            if not self.attacks:
                raise ValueError(f"version='custom' needs attacks, a sequence of: "
                                 f"{', '.join(ATTACK_NAMES)}")
            attacks = tuple(self.attacks)
            bad = [a for a in attacks if a not in ATTACK_NAMES]
            if bad:
                raise ValueError(f"unknown attack(s) {bad}; valid: {', '.join(ATTACK_NAMES)}")
            if len(set(attacks)) != len(attacks):
                raise ValueError(f"attacks must not repeat, got {attacks}")
            object.__setattr__(self, "attacks", attacks)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        for name in ("batch_size", "steps", "apgd_restarts", "fab_restarts", "apgd_targets",
                     "fab_targets", "n_queries", "eot_iter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.eps, (int, float)) and np.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {self.eps!r}")


def attack_names(config: AutoAttackConfig) -> tuple:
    """The attacks the version runs, in order (the reference's ``attacks_to_run``)."""
    if config.version == "standard":
        return ("apgd-ce", "apgd-t", "fab-t", "square")
    if config.version == "plus":
        return ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
    if config.version == "rand":
        return ("apgd-ce", "apgd-dlr")
    return config.attacks


def attack_plan(config: AutoAttackConfig) -> list:
    """``[(name, attack_fn, attack_config)]``: each attack with the settings the reference's
    ``AutoAttack`` gives it for this version and norm."""
    c, e, n = config, float(config.eps), config.norm
    v = c.version
    steps = c.steps if v == "custom" else 100
    largereps = v == "standard" and n == "l1"
    apgd_restarts = {"standard": 5 if n == "l1" else 1, "plus": 5, "rand": 1}.get(
        v, c.apgd_restarts)
    eot = 20 if v == "rand" else (c.eot_iter if v == "custom" else 1)
    apgd_targets = {"standard": 5 if n == "l1" else 9, "plus": 9}.get(v, c.apgd_targets)
    fab_targets = 9 if v != "custom" else c.fab_targets
    fab_restarts = 5 if v == "plus" else c.fab_restarts
    queries = 5000 if v != "custom" else c.n_queries
    make = {
        "apgd-ce": lambda: (apgd, APGDConfig(eps=e, norm=n, loss="ce", steps=steps,
                                             restarts=apgd_restarts, eot_iter=eot,
                                             use_largereps=largereps, loop=c.loop)),
        "apgd-dlr": lambda: (apgd, APGDConfig(eps=e, norm=n, loss="dlr", steps=steps,
                                              restarts=apgd_restarts, eot_iter=eot,
                                              use_largereps=largereps, loop=c.loop)),
        "apgd-t": lambda: (apgd_t, APGDTConfig(eps=e, norm=n, steps=steps, restarts=1,
                                               num_targets=apgd_targets, eot_iter=eot,
                                               use_largereps=largereps, loop=c.loop)),
        "fab": lambda: (fab, FABConfig(eps=e, norm=n, targeted=False, steps=steps,
                                       restarts=fab_restarts)),
        "fab-t": lambda: (fab, FABConfig(eps=e, norm=n, targeted=True, steps=steps, restarts=1,
                                         num_targets=fab_targets)),
        "square": lambda: (square, SquareConfig(eps=e, norm=n, n_queries=queries, p_init=0.8,
                                                rescale_schedule=False)),
    }
    return [(name, *make[name]()) for name in attack_names(config)]


def attack_plan_notes(config: AutoAttackConfig) -> list:
    """Where this plan departs from the reference (empty when it does not: every version and
    norm is the reference's today; the log prints any note first)."""
    del config
    return []


def _outcome(apply_fn, params, x, y, x_adv, norm: str, eps: float):
    """``(x_out, broken)`` of one attacked batch: ``broken`` = misclassified at the (clipped)
    ``x_adv`` and inside the threat model; ``x_out`` = ``x_adv`` there, else ``x``."""
    x_adv = jnp.clip(x_adv, 0.0, 1.0)
    pred = jnp.argmax(apply_fn(params, x_adv), -1)
    inside = _core.lp_norm(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-7
    broken = (pred != y) & inside
    return jnp.where(broken.reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, x), broken


@functools.lru_cache(maxsize=64)
def _runner(apply_fn, fn, cfg, norm: str, eps: float):
    """The jitted attack for one batch: ``(params, x, y, key) -> (x_out, broken)``
    (``_outcome``)."""

    def run(params, x, y, key):
        res = fn(apply_fn, params, x, y, key, cfg)
        return _outcome(apply_fn, params, x, y, res.x_adv, norm, eps)

    return jax.jit(run)


@functools.lru_cache(maxsize=64)
def _target_runner(apply_fn, fn, cfg, norm: str, eps: float):
    """``_runner`` for one target of APGD-T: ``(params, x, y, key, rank) -> (x_out, broken)``,
    ``rank`` int ``[b]`` (``apgd_t``'s ``target_rank``), traced: one program for every target."""

    def run(params, x, y, key, rank):
        res = fn(apply_fn, params, x, y, key, cfg, target_rank=rank)
        return _outcome(apply_fn, params, x, y, res.x_adv, norm, eps)

    return jax.jit(run)


def target_rounds(name: str, cfg, num_classes: int, schedule: str) -> int:
    """How many rounds attack ``name`` runs in the cascade: APGD-T with ``schedule="compact"``
    runs its targets one at a time, each on the examples the earlier targets left robust (the
    reference's ``for target_class in range(2, n_target_classes + 2)`` over ``acc.nonzero()``:
    an example broken by the first target is not attacked 8 more times); every other attack,
    and APGD-T with ``"mask"`` (fixed batches), is one round."""
    if name != "apgd-t" or schedule != "compact":
        return 1
    return max(1, min(cfg.num_targets, num_classes - 1))


@functools.lru_cache(maxsize=16)
def _predictor(apply_fn):
    return jax.jit(lambda p, x: jnp.argmax(apply_fn(p, x), -1))


@dataclasses.dataclass
class AutoAttackState:
    """Where an evaluation stands (host numpy arrays; ``checkpoint`` receives it after every
    batch). ``broken_by[i]``: -1 robust, 0 misclassified clean, ``j >= 1`` broken by the
    ``j``-th attack of ``attacks``. ``current`` attacks are done; of attack ``current``,
    ``target`` rounds (``target_rounds``: APGD-T's targets, one at a time) are done, and of
    the round under way ``batches_done`` batches over ``todo`` (the indices robust when it
    started)."""

    attacks: tuple
    version: str
    norm: str
    eps: float
    schedule: str
    n: int
    robust: np.ndarray
    broken_by: np.ndarray
    x_adv: np.ndarray
    clean_accuracy: float
    accuracy_after: dict
    current: int = 0
    batches_done: int = 0
    todo: Optional[np.ndarray] = None
    seconds: dict = dataclasses.field(default_factory=dict)
    target: int = 0

    def matches(self, config: AutoAttackConfig, names, n: int) -> None:
        got = (tuple(self.attacks), self.version, self.norm, float(self.eps), self.schedule,
               int(self.n))
        want = (tuple(names), config.version, config.norm, float(config.eps), config.schedule, n)
        if got != want:
            raise ValueError(f"the state was created for (attacks, version, norm, eps, schedule, "
                             f"n) = {got}, but this run is {want}: use another state file")


class AutoAttackResult(NamedTuple):
    """The evaluation's outcome.

    Attributes:
      x_adv: [n, H, W, C] float32; the adversarial point of each broken example, else ``x``.
      robust: [n] bool, correctly classified after every attack.
      broken_by: [n] int32; -1 robust, 0 misclassified clean, ``j`` broken by ``attacks[j-1]``.
      attacks: the attack names, in cascade order.
      clean_accuracy, robust_accuracy: fractions in [0, 1].
      accuracy_after: ``{"clean": ..., "apgd-ce": ..., ...}``, the robust accuracy after each
        attack run (the reference's ``robust_accuracy_dict``; attacks skipped because nothing
        was left are absent, as in the reference).
      seconds: wall time per attack (and ``"clean"``), compilation included.
    """

    x_adv: np.ndarray
    robust: np.ndarray
    broken_by: np.ndarray
    attacks: tuple
    clean_accuracy: float
    robust_accuracy: float
    accuracy_after: dict
    seconds: dict


def compact_batch(todo: int, bs: int) -> tuple[int, int]:
    """``(per, padded)``: ``todo`` examples in equal batches of ``per`` (at most ``bs``), each
    padded to ``padded``, a multiple of 8 (below 8 a power of two, so a lone survivor of an
    expensive model is not attacked 8 times): few shapes, so few compiled programs."""
    per = -(-todo // -(-todo // bs))
    return per, min(bs, (per + 7) // 8 * 8 if per > 4 else 1 << (per - 1).bit_length())


def _batches(indices: np.ndarray, bs: int):
    return [indices[i:i + bs] for i in range(0, len(indices), bs)]


def _pad(idx: np.ndarray, bs: int) -> np.ndarray:
    return np.concatenate([idx, np.full(bs - len(idx), idx[0], idx.dtype)]) if len(idx) < bs \
        else idx


def run_checks(apply_fn, params, x, y, config: AutoAttackConfig, names) -> int:
    """The reference's checks on the first batch; returns the number of classes."""
    xb, yb = jnp.asarray(x[:config.batch_size]), jnp.asarray(y[:config.batch_size])
    randomized = False
    if config.version != "rand":
        randomized = checks.check_randomized(apply_fn, params, xb, yb)
    n_cls = checks.check_range_output(apply_fn, params, xb)
    checks.check_dynamic(apply_fn, params, xb)
    plan = {name: cfg for name, _, cfg in attack_plan(config)}
    checks.check_n_classes(n_cls, names,
                           plan["apgd-t"].num_targets if "apgd-t" in plan else 0,
                           plan["fab-t"].num_targets if "fab-t" in plan else 0)
    checks.check_custom(config, randomized)
    checks.check_eps(float(config.eps), config.norm, int(np.prod(x.shape[1:])))
    return n_cls


def autoattack(apply_fn, params, x, y, key, config: AutoAttackConfig = AutoAttackConfig(), *,
               log: Optional[Callable[[str], None]] = None,
               checkpoint: Optional[Callable[[AutoAttackState], None]] = None,
               resume: Optional[AutoAttackState] = None,
               batch_offset: Optional[int] = None) -> AutoAttackResult:
    """Run AutoAttack on ``x`` [n, H, W, C] float32 in [0, 1] with labels ``y`` int [n].

    ``key`` seeds every attack (attack ``a``, batch ``b`` use ``fold_in(fold_in(key, a), b)``).
    Returns an ``AutoAttackResult``; see the module docstring for the versions and the
    cascade, ``log``, ``checkpoint`` and ``resume``.

    ``batch_offset`` (multi-host shares, ``robustjax.report.autoattack``): ``x`` is the part
    of a larger dataset that starts at its batch ``batch_offset``; with ``schedule="mask"``
    batch ``b`` of ``x`` then uses ``fold_in(fold_in(key, a), batch_offset + b)``, the key the
    whole dataset's run gives it, so the shares' results are the one-process run's.
    """
    validation.check_shapes(x, y)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    fn = entry.model_function(apply_fn)  # the model's lax convolutions on robustjax's kernels
    probe = validation.probe_model(fn, params, x[:1])
    validation.start_value_checks(x, y, probe.num_classes)()
    validation.check_eps(config.eps, x.shape[0])
    apply_fn = fn
    say = log or (lambda line: None)
    plan = attack_plan(config)
    names = tuple(name for name, _, _ in plan)
    n, bs = x.shape[0], config.batch_size
    if batch_offset is not None and config.schedule != "mask":
        raise ValueError(f"batch_offset needs schedule='mask' (fixed batches, keyed by their "
                         f"place in the dataset), received schedule={config.schedule!r}")
    for note in attack_plan_notes(config):
        say(f"note: {note}")
    say(f"using {config.version} version including {', '.join(names)}.")
    num_classes = run_checks(apply_fn, params, x, y, config, names)

    if resume is not None:
        state = resume
        state.matches(config, names, n)
        say(f"initial clean accuracy: {state.clean_accuracy:.2%}")
        say(f"robust accuracy at the time of restoring the state: {state.robust.mean():.2%}")
        if state.current:
            say(f"{', '.join(names[:state.current])} was/were already run.")
    else:
        t0 = time.perf_counter()
        robust = np.zeros(n, bool)
        for idx in _batches(np.arange(n), bs):
            pred = np.asarray(entry.data_parallel(lambda f, p, b, _: _predictor(f)(p, b), apply_fn,
                                                  params, jnp.asarray(x[_pad(idx, bs)])))[:len(idx)]
            robust[idx] = pred == y[idx]
        acc = float(robust.mean())
        state = AutoAttackState(
            attacks=names, version=config.version, norm=config.norm, eps=float(config.eps),
            schedule=config.schedule, n=n, robust=robust,
            broken_by=np.where(robust, -1, 0).astype(np.int32), x_adv=x.copy(),
            clean_accuracy=acc, accuracy_after={"clean": acc},
            seconds={"clean": time.perf_counter() - t0})
        say(f"initial accuracy: {acc:.2%}")
        if checkpoint:
            checkpoint(state)

    start = time.perf_counter() - sum(v for k, v in state.seconds.items() if k != "clean")
    for a in range(state.current, len(plan)):
        name, fn, cfg = plan[a]
        if not state.robust.any():
            say("no robust datapoints left, skipping remaining attacks")
            break
        t_attack = time.perf_counter()
        rounds = target_rounds(name, cfg, num_classes, config.schedule)
        if rounds == 1:
            run = lambda f, p, b, k, fn=fn, cfg=cfg: _runner(  # noqa: E731
                f, fn, cfg, config.norm, float(config.eps))(p, *b, k)
        else:  # b[2]: the target rank of every row
            run = lambda f, p, b, k, fn=fn, cfg=cfg: _target_runner(  # noqa: E731
                f, fn, cfg, config.norm, float(config.eps))(p, b[0], b[1], k, b[2])
        key_a = jax.random.fold_in(key, a)
        for t in range(state.target, rounds):
            if state.todo is None:
                state.todo, state.batches_done = np.nonzero(state.robust)[0], 0
            if not len(state.todo):  # every example broken by an earlier target
                break
            if config.schedule == "compact":
                per, bs_a = compact_batch(len(state.todo), bs)
                batches = _batches(state.todo, per)
            else:
                bs_a = bs
                batches = [b for b in _batches(np.arange(n), bs) if np.isin(b, state.todo).any()]
            # one round keeps the keys of the whole attack; target t of APGD-T its own
            key_t = key_a if rounds == 1 else jax.random.fold_in(key_a, 1 << 20 | t)
            label = name if rounds == 1 else f"{name} (target {t + 1}/{rounds})"
            for bi in range(state.batches_done, len(batches)):
                idx = batches[bi]
                padded = _pad(idx, bs_a)
                key_b = jax.random.fold_in(key_t, bi if batch_offset is None
                                           else batch_offset + int(idx[0]) // bs)
                per_example = (jnp.asarray(x[padded]), jnp.asarray(y[padded]))
                if rounds > 1:
                    per_example += (jnp.full(len(padded), t, jnp.int32),)
                x_out, broken = entry.data_parallel(  # sharded over the mesh, if there is one
                    run, apply_fn, params, per_example, key_b)
                x_out, broken = np.asarray(x_out)[:len(idx)], np.asarray(broken)[:len(idx)]
                live = state.robust[idx]
                hit = broken & live
                state.robust[idx[hit]] = False
                state.broken_by[idx[hit]] = a + 1
                state.x_adv[idx[hit]] = x_out[hit]
                state.batches_done = bi + 1
                state.seconds[name] = (state.seconds.get(name, 0.0) + time.perf_counter()
                                       - t_attack)
                t_attack = time.perf_counter()
                say(f"{label} - {bi + 1}/{len(batches)} - {int(hit.sum())} out of "
                    f"{int(live.sum())} successfully perturbed")
                if checkpoint:
                    checkpoint(state)
            if t + 1 < rounds:  # the next target starts from the examples still robust
                state.target, state.todo, state.batches_done = t + 1, None, 0
                if checkpoint:
                    checkpoint(state)
        acc = float(state.robust.mean())
        state.accuracy_after[name] = acc
        state.current, state.todo, state.batches_done, state.target = a + 1, None, 0, 0
        state.seconds.setdefault(name, 0.0)
        say(f"robust accuracy after {name.upper()}: {acc:.2%} "
            f"(total time {time.perf_counter() - start:.1f} s)")
        if checkpoint:
            checkpoint(state)

    checks.check_square_sr(state.accuracy_after)
    res = _core.lp_norm(jnp.asarray(state.x_adv - x), config.norm)
    say(f"max {DISPLAY_NORM[config.norm]} perturbation: {float(res.max()):.5f}, nan in tensor: "
        f"{int(np.isnan(state.x_adv).sum())}, max: {state.x_adv.max():.5f}, "
        f"min: {state.x_adv.min():.5f}")
    robust_acc = float(state.robust.mean())
    say(f"robust accuracy: {robust_acc:.2%}")
    return AutoAttackResult(
        x_adv=state.x_adv, robust=state.robust.copy(), broken_by=state.broken_by.copy(),
        attacks=names, clean_accuracy=state.clean_accuracy, robust_accuracy=robust_acc,
        accuracy_after=dict(state.accuracy_after), seconds=dict(state.seconds))
