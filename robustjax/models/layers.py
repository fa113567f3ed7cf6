"""Layers shared by the model families.

``Conv`` is flax's ``nn.Conv`` whose convolution runs on oneDNN on the CPU
(``robustjax.kernels.conv_general_dilated``: same parameters, same results to float32
rounding, 1.2-80x faster there) and on XLA's convolution everywhere else.
"""

from __future__ import annotations

import functools

import flax.linen as nn

from robustjax.kernels import conv_general_dilated

Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
