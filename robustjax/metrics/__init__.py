"""Robustness metrics (the survey's Table 3 and eqs. 1-5), exact and streaming.

Each metric is a pure function and/or a mergeable accumulator (``empty``/``merge``/``compute``,
see ``accumulators``). One module per family; this ``__init__`` only re-exports.
"""

from robustjax.metrics.accumulators import (  # noqa: F401
    AnySeen,
    Average,
    MinMax,
    Ratio,
    merge_all,
    merge_dicts,
    reduce_stacked,
)
from robustjax.metrics.adversarial import (  # noqa: F401
    AdversarialStats,
    adversarial_metrics,
    attack_success,
)
from robustjax.metrics.boundary import (  # noqa: F401
    EBD1Config,
    EBD2Config,
    BoundaryResult,
    BoundaryStats,
    ebd1,
    ebd2,
    orthogonal_directions,
)
from robustjax.metrics.consistency import eni, eni_stats, eni_values  # noqa: F401
from robustjax.metrics.defense import DefenseStats, defense_metrics, js_divergence  # noqa: F401
from robustjax.metrics.detection import (  # noqa: F401
    DetectionStats,
    auroc,
    threshold_at_fpr,
    tpr_at_fpr,
)
from robustjax.metrics.equations import (  # noqa: F401
    RobustnessCurve,
    corruption_error,
    fooling_rate,
    fooling_rate_stats,
    mce,
    relative_mce,
    retention_rate,
    retention_rate_stats,
    robust_condition,
    robustness_curve,
    robustness_indicator,
)
from robustjax.metrics.imperceptibility import (  # noqa: F401
    PSD_WEIGHTS,
    ImperceptibilityStats,
    lp_distortions,
    psd,
    ssim,
)
from robustjax.metrics.neurons import (  # noqa: F401
    CoverageStats,
    LayerAverages,
    NeuronRanges,
    NeuronUncertaintyConfig,
    activations_fn,
    neuron_sensitivity,
    neuron_uncertainty,
    neuron_values,
)
from robustjax.metrics.task import TaskStats, accuracy, topk_correct  # noqa: F401
