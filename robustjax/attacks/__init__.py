"""Adversarial attacks: every attack is ``attack(apply_fn, params, x, y, key, config)``.

``ATTACKS`` maps a name to ``(attack_fn, ConfigClass)``; ``ConfigClass()`` holds the paper's
defaults.
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
from robustjax.attacks.apgd import APGDConfig, APGDTConfig, apgd, apgd_t  # noqa: F401
from robustjax.attacks.autoattack import (  # noqa: F401
    AutoAttackConfig,
    AutoAttackResult,
    autoattack,
)
from robustjax.attacks.autoattack_checks import AutoAttackWarning  # noqa: F401
from robustjax.attacks.embedding import (  # noqa: F401
    EmbeddingAttackResult,
    EmbeddingPGDConfig,
    embedding_distance,
    embedding_pgd,
    embedding_shift,
)
from robustjax.attacks.fab import FABConfig, fab  # noqa: F401
from robustjax.attacks.boundary import BoundaryConfig, boundary  # noqa: F401
from robustjax.attacks.decision import DecisionResult  # noqa: F401
from robustjax.attacks.hopskipjump import HopSkipJumpConfig, hopskipjump  # noqa: F401
from robustjax.attacks.nes import NESConfig, nes  # noqa: F401
from robustjax.attacks.zoo import ZOOConfig, zoo  # noqa: F401
from robustjax.attacks.composite import CompositeConfig, composite  # noqa: F401
from robustjax.attacks.cw import CWL2Config, CWLinfConfig, cw_l2, cw_linf  # noqa: F401
from robustjax.attacks.deepfool import DeepFoolConfig, deepfool  # noqa: F401
from robustjax.attacks.ead import EADConfig, ead  # noqa: F401
from robustjax.attacks.fmn import FMNConfig, fmn, fmn_from  # noqa: F401
from robustjax.attacks.gradient import (  # noqa: F401
    BIMConfig,
    FGSMConfig,
    MIFGSMConfig,
    PGDConfig,
    bim,
    fgsm,
    mifgsm,
    pgd,
)
from robustjax.attacks.jsma import JSMAConfig, jsma  # noqa: F401
from robustjax.attacks.one_pixel import OnePixelConfig, one_pixel  # noqa: F401
from robustjax.attacks.sparse_rs import SparseRSConfig, sparse_rs  # noqa: F401
from robustjax.attacks.patch import (  # noqa: F401
    PatchConfig,
    PatchResult,
    adversarial_patch,
    apply_patch,
    place_patch,
)
from robustjax.attacks.spatial import SpatialGridConfig, spatial_grid  # noqa: F401
from robustjax.attacks.spsa import SPSAConfig, spsa  # noqa: F401
from robustjax.attacks.stadv import StAdvConfig, stadv  # noqa: F401
from robustjax.attacks.square import SquareConfig, square  # noqa: F401
from robustjax.attacks.search import eps_sweep, min_eps, restarts  # noqa: F401
from robustjax.attacks.transfer import (  # noqa: F401
    DIFGSMConfig,
    TIFGSMConfig,
    TransferResult,
    difgsm,
    ensemble,
    tifgsm,
    transfer_evaluation,
)
from robustjax.attacks.universal import (  # noqa: F401
    SGDUAPConfig,
    UAPConfig,
    UniversalResult,
    apply_universal,
    fooling_rate,
    sgd_universal_perturbation,
    universal_perturbation,
)
from robustjax.attacks.wrappers import EOTParams, bpda, bpda_model, eot  # noqa: F401

ATTACKS = {
    "fgsm": (fgsm, FGSMConfig),
    "bim": (bim, BIMConfig),
    "pgd": (pgd, PGDConfig),
    "mifgsm": (mifgsm, MIFGSMConfig),
    "apgd": (apgd, APGDConfig),
    "apgd_t": (apgd_t, APGDTConfig),
    "fab": (fab, FABConfig),
    "square": (square, SquareConfig),
    "spsa": (spsa, SPSAConfig),
    "cw_l2": (cw_l2, CWL2Config),
    "cw_linf": (cw_linf, CWLinfConfig),
    "deepfool": (deepfool, DeepFoolConfig),
    "ead": (ead, EADConfig),
    "fmn": (fmn, FMNConfig),
    "one_pixel": (one_pixel, OnePixelConfig),
    "sparse_rs": (sparse_rs, SparseRSConfig),
    "jsma": (jsma, JSMAConfig),
    "difgsm": (difgsm, DIFGSMConfig),
    "tifgsm": (tifgsm, TIFGSMConfig),
    "nes": (nes, NESConfig),
    "zoo": (zoo, ZOOConfig),
    "boundary": (boundary, BoundaryConfig),
    "hopskipjump": (hopskipjump, HopSkipJumpConfig),
    "spatial_grid": (spatial_grid, SpatialGridConfig),
    "stadv": (stadv, StAdvConfig),
    "composite": (composite, CompositeConfig),
}
