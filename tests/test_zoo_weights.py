"""Torch-free checkpoint readers, the strict loading framework and `robustjax port`.

References: tests/fixtures/weights/{zip,legacy}.pt and expected.npz were written by PyTorch
(scripts/make_weights_fixtures.py); safetensors files are compared with the `safetensors`
package when it is installed.
"""

import io
import re
import pathlib
import pickle
import struct
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest

from robustjax import port, weights
from robustjax.models import StateDictMismatchError, load
from robustjax.models.loading import loadable_names

HERE = pathlib.Path(__file__).parent
WEIGHTS = HERE / "fixtures/weights"
RESNET = HERE / "fixtures/resnet"
RESNET_KW = dict(num_classes=10, input_shape=(40, 40, 3), layers=(1, 2, 1, 1),
                 widths=(4, 8, 16, 32))


# --- .pth / .pt without torch ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_formats_match_pytorch(fmt):
    expected = np.load(WEIGHTS / "expected.npz")
    sd = weights.read_state_dict(WEIGHTS / f"{fmt}.pt")  # {"model": sd, ...} is unwrapped
    assert sorted(sd) == sorted(expected.files)
    for key in expected.files:
        got, want = sd[key], expected[key]
        assert got.shape == want.shape, key
        if key == "bf16":
            assert got.dtype == ml_dtypes.bfloat16
            got = got.astype(np.float32)
        assert got.dtype == want.dtype, key
        np.testing.assert_array_equal(got, want, err_msg=key)
    # non-tensor entries survive in the raw object
    raw = weights.load_torch(WEIGHTS / f"{fmt}.pt")
    assert raw["epoch"] == 3 and raw["note"] == "fixture"
    assert sd["transposed"].flags.c_contiguous and sd["transposed"].flags.writeable


def test_legacy_real_checkpoint_is_read():
    from robustjax.models.efficientnet import pretrained_path

    raw = pathlib.Path(pretrained_path()).read_bytes()
    assert not raw.startswith(b"PK")  # really the legacy format, not a zip
    sd = weights.read_state_dict(pretrained_path())
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    # NOTES.md: 4.69M values (including the 49 num_batches_tracked counters)
    assert sum(v.size for v in sd.values()) == 4_694_073


class _Payload:
    """Pickles to ``exec(<write the marker file>)``: runs code if the unpickler allows it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _legacy_bytes(obj, header_obj=None):
    f = io.BytesIO()
    for part in (weights.LEGACY_MAGIC, 1001, header_obj or {"little_endian": True}, obj, []):
        pickle.dump(part, f, protocol=2)
    return f.getvalue()


def _zip_bytes(obj, raw=None):
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("archive/data.pkl", raw if raw is not None else pickle.dumps(obj, protocol=2))
        zf.writestr("archive/version", "3\n")
    return f.getvalue()


@pytest.mark.parametrize("kind", ["plain", "zip", "legacy_object", "legacy_sysinfo"])
def test_malicious_pickle_is_refused(tmp_path, kind):
    marker = tmp_path / "marker.txt"
    payload = {"weight": _Payload(marker)}
    # the payload is live: an ordinary unpickler runs it
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()
    marker.unlink()
    data = {"plain": lambda: pickle.dumps(payload),
            "zip": lambda: _zip_bytes(payload),
            "legacy_object": lambda: _legacy_bytes(payload),
            "legacy_sysinfo": lambda: _legacy_bytes({}, header_obj=payload)}[kind]()
    path = tmp_path / "evil.pth"
    path.write_bytes(data)
    with pytest.raises(weights.UnsafeCheckpointError) as e:
        weights.read_state_dict(path)
    # protocol 2 spells it __builtin__.exec (Python 2 name), protocol 5 builtins.exec
    assert re.search(r"refused to load global '(__builtin__|builtins)\.exec'", str(e.value))
    assert str(path) in str(e.value)
    assert not marker.exists()


def test_other_globals_are_refused_too(tmp_path):
    path = tmp_path / "odd.pt"
    path.write_bytes(_zip_bytes({"x": pathlib.PurePosixPath("a")}))
    with pytest.raises(weights.UnsafeCheckpointError, match="pathlib"):
        weights.read_state_dict(path)


def test_build_is_only_accepted_on_ordered_dicts(tmp_path):
    # _rebuild_parameter({}) -> {}; then BUILD {'a': 1} onto it: must be refused
    evil = (b"\x80\x02ctorch._utils\n_rebuild_parameter\n}\x85R"
            b"}X\x01\x00\x00\x00aK\x01sb.")
    odict = evil.replace(b"torch._utils\n_rebuild_parameter", b"collections\nOrderedDict"
                         ).replace(b"X\x01\x00\x00\x00a", b"X\x09\x00\x00\x00_metadata")
    assert pickle.loads(odict)._metadata == 1  # valid opcodes: a plain unpickler sets the state
    path = tmp_path / "build.pt"
    path.write_bytes(_zip_bytes(None, raw=odict))
    # torch's {"_metadata": ...} is accepted on OrderedDict, and dropped (other state: see
    # test_weights_security.py)
    assert not hasattr(weights.load_torch(path), "_metadata")
    path.write_bytes(_zip_bytes(None, raw=evil))
    with pytest.raises(weights.UnsafeCheckpointError, match="BUILD"):
        weights.load_torch(path)


@pytest.mark.parametrize("offset,size,stride", [(2, (3,), (1,)), (3, (2,), (-1,)),
                                                (0, (10**6,), (0,))])
def test_tensor_geometry_is_checked(offset, size, stride):
    # views reaching outside their storage (or absurdly expanding it) must never be read
    storage = weights._Storage(np.dtype(np.float32), 4)
    storage.set_bytes(np.arange(4, dtype=np.float32).tobytes(), "t")
    with pytest.raises(weights.CheckpointError):
        weights._LazyTensor(storage, offset, size, stride).materialize()


def test_explicit_sub_dict_key():
    sd = weights.read_state_dict(WEIGHTS / "legacy.pt", key="model")
    assert "f32" in sd
    with pytest.raises(weights.CheckpointError, match="no entry 'model_ema'"):
        weights.read_state_dict(WEIGHTS / "legacy.pt", key="model_ema")


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        weights.read_state_dict(tmp_path / "nope.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"\x00\x01 not a pickle at all")
    with pytest.raises(weights.CheckpointError, match="garbage.pth"):
        weights.read_state_dict(bad)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes((WEIGHTS / "legacy.pt").read_bytes()[:-100])
    with pytest.raises(weights.CheckpointError, match="truncated|unreadable"):
        weights.read_state_dict(trunc)
    other = tmp_path / "w.h5"
    other.write_bytes(b"x")
    with pytest.raises(weights.CheckpointError, match="unknown checkpoint format '.h5'"):
        weights.read_state_dict(other)


# --- .safetensors and .npz --------------------------------------------------------------------

def test_safetensors_matches_reference_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.RandomState(0)
    tensors = {"a.weight": rng.randn(3, 4).astype(np.float32), "b": rng.randn(5),
               "c": rng.randint(-9, 9, (2, 2, 2)).astype(np.int64), "d": np.array(True),
               "e": rng.randn(6).astype(np.float16), "empty": np.zeros((0, 2), np.float32)}
    path = tmp_path / "t.safetensors"
    st.save_file(tensors, str(path), metadata={"format": "np"})
    ours, ref = weights.read_state_dict(path), st.load_file(str(path))
    assert sorted(ours) == sorted(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape
        np.testing.assert_array_equal(ours[k], ref[k])


def test_safetensors_hand_written_and_corrupt(tmp_path):
    # the format by hand (spec: u64 LE header size, JSON header, raw LE bytes)
    arr = np.arange(6, dtype="<f4").reshape(2, 3)
    header = b'{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}'
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + arr.tobytes())
    np.testing.assert_array_equal(weights.read_state_dict(path)["w"], arr)
    path.write_bytes(struct.pack("<Q", 10**6) + header)
    with pytest.raises(weights.CheckpointError, match="exceeds the file size"):
        weights.read_state_dict(path)
    bad = header.replace(b"24]", b"20]")
    path.write_bytes(struct.pack("<Q", len(bad)) + bad + arr.tobytes())
    with pytest.raises(weights.CheckpointError, match="inconsistent offsets"):
        weights.read_state_dict(path)


def test_npz_reader_refuses_pickled_objects(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, ok=np.ones(2), obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(weights.CheckpointError, match="o.npz"):
        weights.read_state_dict(path)
    np.savez(path, ok=np.ones(2))
    np.testing.assert_array_equal(weights.read_state_dict(path)["ok"], np.ones(2))


# --- strict loading ---------------------------------------------------------------------------

def test_mismatches_are_listed_together_and_non_strict_warns():
    sd = weights.read_state_dict(RESNET / "basic.pth")
    sd.pop("layer2.0.conv1.weight")
    sd.pop("fc.bias")
    sd["layer9.0.conv1.weight"] = np.zeros((1,), np.float32)
    sd["bn1.weight"] = np.ones(3, np.float32)
    with pytest.raises(StateDictMismatchError) as e:
        load("resnet18", sd, **RESNET_KW)
    msg = str(e.value)
    for needle in ("layer2.0.conv1.weight", "fc.bias", "layer9.0.conv1.weight",
                   "params/bn1/scale: checkpoint (3,) vs model (64,)", "strict=False"):
        assert needle in msg
    with pytest.warns(UserWarning, match="layer9.0.conv1.weight"):
        model = load("resnet18", sd, strict=False, **RESNET_KW)
    ref = load("resnet18", RESNET / "basic.pth", **RESNET_KW)
    # what fits is loaded, what does not keeps its (finite) initial value
    np.testing.assert_array_equal(model.params["params"]["layer1_0"]["conv1"]["kernel"],
                                  ref.params["params"]["layer1_0"]["conv1"]["kernel"])
    assert model.params["params"]["bn1"]["scale"].shape == (64,)
    assert np.isfinite(model.params["params"]["fc"]["bias"]).all()


def test_unknown_names_list_the_valid_ones():
    assert {"efficientnet_lite0", "resnet50", "resnet101"} <= set(loadable_names())
    with pytest.raises(KeyError, match="resnet101"):
        load("resnet1001", RESNET / "basic.pth")


# --- robustjax port ---------------------------------------------------------------------------

def test_port_round_trips_exactly(tmp_path, capsys):
    out = tmp_path / "basic.npz"
    argv = [str(RESNET / "basic.pth"), "--model", "resnet18", "--out", str(out),
            "--num-classes", "10", "--input-shape", "40,40,3",
            "--set", "layers=[1,2,1,1]", "--set", "widths=[4,8,16,32]"]
    assert port.main(argv) == 0
    assert out.exists() and out.with_suffix(".json").exists()
    direct = load("resnet18", RESNET / "basic.pth", **RESNET_KW)
    ported = load("resnet18", out)  # overrides and spec come from the file
    assert jax.tree.structure(direct.params) == jax.tree.structure(ported.params)
    for a, b in zip(jax.tree.leaves(direct.params), jax.tree.leaves(ported.params)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert ported.spec == direct.spec
    # never overwrite without --force
    before = out.read_bytes()
    assert port.main(argv) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert port.main(argv + ["--force"]) == 0
    with pytest.raises(ValueError, match="holds a ported 'resnet18'"):
        load("resnet50", out)
