"""Adversarial attacks: every attack is ``attack(apply_fn, params, x, y, key, config)``.

``ATTACKS`` maps a name to ``(attack_fn, ConfigClass)``.
"""

from robustjax.attacks._core import (  # noqa: F401
    LOSSES,
    NORMS,
    AttackResult,
    cross_entropy,
    dlr,
    dlr_targeted,
    lp_norm,
    margin,
    project,
    success_mask,
)

ATTACKS = {
}
