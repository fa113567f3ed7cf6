"""Compiled kernels that XLA:CPU lacks: oneDNN convolutions (see ``conv`` and ``build``)."""

from robustjax.kernels.accelerate import accelerate, count_convolutions, needs_acceleration
from robustjax.kernels.build import Status, status
from robustjax.kernels.conv import (
    LAX_EQUIVALENTS,
    conv_backward_data_p,
    conv_backward_weights_p,
    conv_general_dilated,
    conv_p,
    onednn_active,
    use_onednn,
)

__all__ = ["LAX_EQUIVALENTS", "Status", "accelerate", "count_convolutions", "needs_acceleration", "conv_backward_data_p", "conv_backward_weights_p",
           "conv_general_dilated",
           "conv_p", "onednn_active", "status", "use_onednn"]
