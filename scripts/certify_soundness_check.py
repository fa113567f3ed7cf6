"""Soundness spot check: IBP-train the small CNN, then compare IBP / CROWN-IBP / CROWN margin
lower bounds at eps=0.1 with margins reached by PGD on 200 stratified test digits.

Run: ``PYTHONPATH=. python scripts/certify_soundness_check.py`` (~2 min on 2 cores)."""
import jax, jax.numpy as jnp, numpy as np, time
from robustjax import data, checkpoint
from robustjax.certify import api
from robustjax.certify.training import train_certified
x, y = data.load("mnist5k", "train"); xt, yt = data.load("mnist5k", "test")
t = time.time()
model, hist = train_certified(x, y, jax.random.PRNGKey(0), eps=0.15, epochs=8)
print("train", time.time() - t, flush=True)
checkpoint.save("/tmp/certify_ibp_model.npz", model.params, model.spec, overwrite=True)
xs, ys = jnp.asarray(xt[::5]), jnp.asarray(yt[::5])
eps = 0.1
def margins_lower(m):
    f = jax.jit(lambda p, a, b: api.bounds(model.apply_fn, p, a, eps, m, spec=api.margin_spec(b, 10), chunk_size=4 if m=="crown" else 100, upper=False)[0])
    return np.concatenate([np.asarray(f(model.params, xs[i:i+100], ys[i:i+100])) for i in range(0, 200, 100)])
low = {m: margins_lower(m) for m in ("ibp", "crown_ibp", "crown")}
pred = np.argmax(np.asarray(model.apply_fn(model.params, xs)), -1)
correct = pred == np.asarray(ys)
for m, l in low.items():
    ok = np.asarray(api.margin_condition(jnp.asarray(l), ys))
    print(m, "verified", ok.mean(), "verified & wrong:", np.sum(ok & ~correct))
# PGD on margins: minimise min_j (f_y - f_j)
def margin(p, a, b):
    lg = model.apply_fn(p, a); k = lg.shape[-1]
    fy = jnp.take_along_axis(lg, b[:, None], 1)
    return jnp.where(jax.nn.one_hot(b, k, dtype=bool), jnp.inf, fy - lg)
g = jax.jit(jax.grad(lambda a: jnp.sum(jnp.min(margin(model.params, a, ys), -1))))
best = np.asarray(margin(model.params, xs, ys))
for r in range(3):
    a = jnp.clip(xs + eps * jax.random.uniform(jax.random.PRNGKey(r), xs.shape, minval=-1, maxval=1), 0, 1)
    for _ in range(40):
        a = jnp.clip(jnp.clip(a - 0.01 * jnp.sign(g(a)), xs - eps, xs + eps), 0, 1)
    best = np.minimum(best, np.asarray(margin(model.params, a, ys)))
for m, l in low.items():
    mask = ~np.asarray(jax.nn.one_hot(ys, 10, dtype=bool))
    viol = (l > best + 1e-4) & mask
    print(m, "bound above an attained margin:", viol.sum(), "max excess", np.max(np.where(mask, l - best, -np.inf)))
print("PGD robust acc", np.mean(np.all(np.where(np.asarray(jax.nn.one_hot(ys,10,dtype=bool)), True, best > 0), -1)))
