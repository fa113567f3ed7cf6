"""Compiled kernels that XLA:CPU lacks: oneDNN convolutions (see ``conv`` and ``build``)."""

from robustjax.kernels.accelerate import accelerate, count_convolutions, needs_acceleration
from robustjax.kernels.build import Status, status
from robustjax.kernels.conv import (
    LAX_EQUIVALENTS,
    bind,
    conv_backward_data_p,
    conv_backward_weights_p,
    conv_general_dilated,
    conv_p,
    eligible,
    onednn_active,
    use_onednn,
)

__all__ = ["LAX_EQUIVALENTS", "bind", "Status", "accelerate", "count_convolutions", "needs_acceleration", "conv_backward_data_p", "conv_backward_weights_p",
           "conv_general_dilated",
           "conv_p", "eligible", "onednn_active", "status", "use_onednn"]
