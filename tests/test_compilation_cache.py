"""JAX's persistent compilation cache under ``$ROBUSTJAX_CACHE`` (robustjax.compilation_cache).

A first process writes its compiled programs, one with robustjax's oneDNN convolutions (XLA FFI
custom calls) among them; a second process loads them instead of compiling (JAX's cache-hit
events; the entries are not rewritten) and gets bit-identical results. The switch writes
nothing; a cache folder that cannot be written leaves the cache off without failing the import.
Each process starts with the test session's compiled oneDNN kernels copied into its fresh cache
folder (no C++ build).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from robustjax import compilation_cache as cc
from robustjax import kernels

PROGRAMS = r"""
import hashlib, json, sys
import jax, jax.numpy as jnp, numpy as np
import robustjax
from robustjax import attacks, compilation_cache as cc, kernels

events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
if sys.argv[1] == "disable":  # switched off after the import: only a plain program
    cc.disable()
    jax.block_until_ready(jax.jit(lambda v: jnp.cumsum(jnp.tanh(v), axis=1))(jnp.ones((4, 9))))
    print(json.dumps({"status": [cc.status().enabled, cc.status().reason],
                      "jax_dir": jax.config.jax_compilation_cache_dir,
                      "hits": events.count("/jax/compilation_cache/cache_hits"),
                      "misses": events.count("/jax/compilation_cache/cache_misses")}))
    sys.exit()


def apply_fn(p, x):  # a one-convolution model on robustjax's oneDNN kernels
    h = kernels.conv_general_dilated(x, p["w"], (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(h).reshape(x.shape[0], -1) @ p["d"]


rng = np.random.default_rng(0)  # numpy: jax.random's normal alone compiles for seconds
params = {"w": jnp.asarray(rng.normal(size=(3, 3, 3, 8)) * 0.3, jnp.float32),
          "d": jnp.asarray(rng.normal(size=(6 * 6 * 8, 10)) * 0.1, jnp.float32)}
x = jnp.asarray(rng.uniform(size=(4, 12, 12, 3)), jnp.float32)
y = jnp.arange(4, dtype=jnp.int32)
cfg = attacks.FGSMConfig(eps=0.05)
adv = np.asarray(attacks.fgsm(apply_fn, params, x, y, None, cfg).x_adv)  # the eager entry point
hlo = jax.jit(attacks.fgsm, static_argnums=(0, 5)).lower(apply_fn, params, x, y, None,
                                                         cfg).as_text()
plain = np.asarray(jax.jit(lambda v: jnp.cumsum(jnp.tanh(v) @ v.T, axis=1))(x.reshape(4, -1)))
print(json.dumps({
    "status": [cc.status().enabled, cc.status().reason],
    "jax_dir": jax.config.jax_compilation_cache_dir,
    "onednn": kernels.status().available, "custom_call": "robustjax_conv" in hlo,
    "hits": events.count("/jax/compilation_cache/cache_hits"),
    "misses": events.count("/jax/compilation_cache/cache_misses"),
    "adv": hashlib.sha256(adv.tobytes()).hexdigest(),
    "plain": hashlib.sha256(plain.tobytes()).hexdigest()}))
"""


def _fresh(cache: pathlib.Path) -> pathlib.Path:
    """An empty robustjax cache folder holding only this session's compiled oneDNN kernels."""
    cache.mkdir()
    lib = kernels.status().library
    if lib:  # <cache>/kernels/<hash>/librobustjax_onednn.so: the same hash in the subprocess
        src = pathlib.Path(lib).parent
        shutil.copytree(src, cache / "kernels" / src.name)
    return cache


@pytest.fixture
def fresh_cache(tmp_path):
    return _fresh(tmp_path / "cache")


def _run(cache, mode="on", **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("JAX_COMPILATION_CACHE_DIR", cc.ENV_VAR)}
    # every program, however quickly compiled, so that the tiny ones here are written too
    full.update(ROBUSTJAX_CACHE=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
    out = subprocess.run([sys.executable, "-c", PROGRAMS, mode], capture_output=True, text=True,
                         env=full, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Error reading persistent compilation cache" not in out.stderr, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(cache):
    return {p.relative_to(cache): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in (cache / cc.SUBDIR).rglob("*-cache")}


def test_second_process_loads_what_the_first_compiled_bit_identically(fresh_cache, tmp_path):
    first = _run(fresh_cache)
    assert first["status"][0] and first["jax_dir"].startswith(str(fresh_cache / cc.SUBDIR))
    written = _entries(fresh_cache)
    assert first["misses"] >= 2 and first["hits"] == 0
    assert len(written) == first["misses"]
    assert any(p.name.startswith("jit_fgsm-") for p in written)
    if first["onednn"]:  # the attack's program holds the FFI custom calls
        assert first["custom_call"]

    second = _run(fresh_cache)
    assert second["misses"] == 0 and second["hits"] == first["misses"]
    assert _entries(fresh_cache) == written  # read, not rewritten
    assert (second["adv"], second["plain"]) == (first["adv"], first["plain"])

    # switched off by the environment: nothing written, the same bits computed
    other = _fresh(tmp_path / "other")
    off = _run(other, ROBUSTJAX_COMPILATION_CACHE="0")
    assert not off["status"][0] and cc.ENV_VAR in off["status"][1] and off["jax_dir"] is None
    assert off["hits"] == off["misses"] == 0 and not (other / cc.SUBDIR).exists()
    assert (off["adv"], off["plain"]) == (first["adv"], first["plain"])


def test_switched_off_by_the_function_writes_nothing(fresh_cache):
    res = _run(fresh_cache, "disable")
    assert not res["status"][0] and "disable()" in res["status"][1] and res["jax_dir"] is None
    assert res["hits"] == res["misses"] == 0
    assert _entries(fresh_cache) == {}  # (the import created the empty folder)


def test_a_cache_folder_that_cannot_be_written_leaves_import_working(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "ROBUSTJAX_CACHE": str(blocker / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop(cc.ENV_VAR, None)
    script = ("import jax, jax.numpy as jnp, robustjax\n"
              "from robustjax import compilation_cache as cc\n"
              "s = cc.status()\n"
              "assert not s.enabled and 'cannot be written' in s.reason, s\n"
              "assert jax.config.jax_compilation_cache_dir is None\n"
              "print(float(jax.jit(lambda v: v * 2)(jnp.ones(3)).sum()))\n")
    out = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "6.0", out.stderr[-3000:]


def test_read_only_folder_disables_the_cache(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes into a 0o555 folder anyway: fail as a read-only disk does
        def read_only(*args, **kwargs):
            raise OSError(30, "Read-only file system")

        monkeypatch.setattr(cc.tempfile, "mkstemp", read_only)
    # as if off: the failed enable() then has no JAX settings of this process to undo
    # (the real status and settings are restored after the test)
    monkeypatch.setattr(cc, "_status", cc.Status(False, "off for this test"))
    monkeypatch.setattr(cc, "_saved", {})
    config_before = jax.config.jax_compilation_cache_dir
    try:
        s = cc.enable(ro / "jax")
        assert not s.enabled and "cannot be written" in s.reason
    finally:
        ro.chmod(0o755)
    assert not any((ro / "jax").glob("*"))  # nothing written
    assert jax.config.jax_compilation_cache_dir == config_before


def test_enable_and_disable_in_process_and_the_users_own_setting(tmp_path, monkeypatch):
    before = cc.status()
    saved = dict(cc._saved)
    config_before = jax.config.jax_compilation_cache_dir
    target = tmp_path / "jcc"
    try:
        s = cc.enable(target, min_compile_time_secs=0)
        assert s.enabled and s.path == target
        assert jax.config.jax_compilation_cache_dir == str(target)
        jax.block_until_ready(jax.jit(lambda v: jnp.sin(v) * 3 + 1)(jnp.ones(11)))
        n = len(list(target.glob("*-cache")))
        assert n >= 1
        cc.disable()
        assert not cc.status().enabled and jax.config.jax_compilation_cache_dir == (
            saved.get("jax_compilation_cache_dir", config_before))
        jax.block_until_ready(jax.jit(lambda v: jnp.cos(v) * 5 - 2)(jnp.ones(13)))
        assert len(list(target.glob("*-cache"))) == n  # nothing written while off

        # a cache the user set up is left alone by the import-time set-up
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "theirs"))
        cc._enable_on_import()
        assert not cc.status().enabled and "left to the user" in cc.status().reason
        assert jax.config.jax_compilation_cache_dir == saved.get("jax_compilation_cache_dir",
                                                                 config_before)
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
        monkeypatch.setenv(cc.ENV_VAR, "off")
        cc._enable_on_import()
        assert not cc.status().enabled and cc.ENV_VAR in cc.status().reason
    finally:
        cc.disable()
        if before.enabled:  # this worker's own cache, as it was
            cc.enable(before.path)
        cc._status = before
        assert jax.config.jax_compilation_cache_dir == config_before
