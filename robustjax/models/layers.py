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


def maybe_remat(block: type[nn.Module], remat: bool, static_argnums: tuple[int, ...] = ()):
    """``block``, or ``nn.remat(block)`` when ``remat``: rematerialisation per residual block.

    A rematerialised block keeps only its input for the backward pass and recomputes its
    inside there (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"), so the
    memory a gradient (an attack step, a training step) holds is one block's activations plus
    every block's input, for about one more forward pass of compute. The parameters and their
    names are the same either way, so checkpoints load into both. ``static_argnums`` counts
    ``self`` as 0 (flax's convention), e.g. ``(2,)`` for ``__call__(self, x, train)``.
    """
    return nn.remat(block, static_argnums=static_argnums) if remat else block
