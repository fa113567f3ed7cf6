"""robustjax's margin bounds equal auto_LiRPA's on the same weights (no PyTorch at test time).

The fixture (``benchmarks/certify_lirpa.py --fixture``) holds two tiny ReLU nets (8x8x1: two
convs and two dense layers; the second with eval-mode BatchNorm after every layer), four
images, their clean predictions ``y``, the PyTorch logits and auto_LiRPA's lower bounds of
``f_y - f_j`` over the Linf ball for IBP, CROWN-IBP, CROWN and CROWN with the ReLU option
``same-slope`` (Fast-Lin). The nets are rebuilt here from the stored layer list.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.certify import api

FIXTURE = np.load(pathlib.Path(__file__).parent / "fixtures" / "certify_lirpa_reference.npz")


def _net(arch):
    _, _, layers = json.loads(str(FIXTURE[f"{arch}/arch"]))
    prefix = f"{arch}/p_"
    params = {k[len(prefix):]: jnp.asarray(FIXTURE[k]) for k in FIXTURE.files
              if k.startswith(prefix)}

    def apply_fn(p, x):
        h = x
        for i, layer in enumerate(layers):
            if layer[0] == "conv":
                pad = layer[4]
                h = jax.lax.conv_general_dilated(
                    h, p[f"{i}_kernel"], (layer[3],) * 2, ((pad, pad), (pad, pad)),
                    dimension_numbers=("NHWC", "HWIO", "NHWC")) + p[f"{i}_bias"]
            elif layer[0] == "bn":
                h = ((h - p[f"{i}_mean"]) / jnp.sqrt(p[f"{i}_var"] + 1e-5) * p[f"{i}_scale"]
                     + p[f"{i}_bias"])
            elif layer[0] == "relu":
                h = jnp.maximum(h, 0.0)
            elif layer[0] == "flatten":
                h = h.reshape((h.shape[0], -1))
            else:
                h = h @ p[f"{i}_kernel"] + p[f"{i}_bias"]
        return h

    return apply_fn, params


@pytest.mark.parametrize("arch", ["tiny", "tiny_bn"])
def test_margin_bounds_equal_auto_lirpa(arch):
    apply_fn, params = _net(arch)
    x, y = jnp.asarray(FIXTURE[f"{arch}/x"]), jnp.asarray(FIXTURE[f"{arch}/y"])
    eps = float(FIXTURE[f"{arch}/eps"])
    # The weights were converted right: the same logits as PyTorch.
    np.testing.assert_allclose(apply_fn(params, x), FIXTURE[f"{arch}/torch_logits"], atol=1e-5)

    def all_methods(p, a, b):
        spec = api.margin_spec(b, 5)
        return {m: api.bounds(apply_fn, p, a, eps, m, spec=spec, chunk_size=2, upper=False)[0]
                for m in ("ibp", "crown_ibp", "fastlin", "crown")}

    lowers = jax.jit(all_methods)(params, x, y)
    for method, lower in lowers.items():
        ref = FIXTURE[f"{arch}/lirpa_{method}"]
        np.testing.assert_allclose(lower, ref, atol=1e-5 * max(1.0, np.abs(ref).max()),
                                   err_msg=method)
    # The methods differ on these nets, so equality above is not a coincidence.
    assert float(jnp.max(lowers["crown"] - lowers["ibp"])) > 1e-3
    assert float(jnp.max(jnp.abs(lowers["crown"] - lowers["fastlin"]))) > 1e-4
