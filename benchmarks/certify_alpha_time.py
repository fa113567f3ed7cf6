"""alpha-CROWN with optimised intermediate bounds: seconds of eager ``api.bounds`` calls (the
first with its compile, then two more) on the nets of tests/fixtures/certify_lirpa_reference.npz,
to set against ``certify_lirpa_alpha.py`` (auto_LiRPA). From the repository root:
``PYTHONPATH=. python benchmarks/certify_alpha_time.py``."""

import sys
import time

import jax
import jax.numpy as jnp

from robustjax.certify import api
from robustjax.certify.crown import AlphaCrownConfig

sys.path.insert(0, "tests")
from test_certify_lirpa import FIXTURE, _net  # noqa: E402


def main():
    cfg = AlphaCrownConfig(intermediate=True)
    for arch in ("tiny", "tiny_bn"):
        apply_fn, params = _net(arch)
        x, y = jnp.asarray(FIXTURE[f"{arch}/x"]), jnp.asarray(FIXTURE[f"{arch}/y"])
        eps = float(FIXTURE[f"{arch}/eps"])
        spec = api.margin_spec(y, 5)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            lo = api.bounds(apply_fn, params, x, eps, "alpha_crown", spec=spec,
                            alpha_config=cfg, upper=False)[0]
            jax.block_until_ready(lo)
            times.append(time.perf_counter() - t)
        print(arch, "sum", float(jnp.sum(lo)),
              "first (with compile) %.2f s, then %.3f / %.3f s" % tuple(times))


if __name__ == "__main__":
    main()
