"""Hostile checkpoints: the torch-free reader (robustjax.weights) refuses them with a
CheckpointError before it runs code, allocates for a declared size, or writes anything
(SECURITY.md). Every file is built here, by hand: pickle opcodes, zipfile, struct; no torch.

The basic payloads (a global outside the allow-list, BUILD on a plain dict, views outside their
storage) are in test_zoo_weights.py; this file has the look-alikes and the harder cases.
"""

import copyreg
import io
import json
import pickle
import re
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from robustjax import weights

# --- a small pickle assembler (protocol 2 opcodes, the ones torch.save writes) ---------------


def glob(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def s(text):
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def i(n):
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def tup(*items):
    return b"(" + b"".join(items) + b"t"


def call(func, *args):
    return func + tup(*args) + b"R"


def dct(**items):
    return b"}(" + b"".join(s(k) + v for k, v in items.items()) + b"u"


def odict(**items):
    return call(glob("collections", "OrderedDict")) + b"(" + b"".join(
        s(k) + v for k, v in items.items()) + b"u"


def storage(key="0", numel=4, stype="FloatStorage"):
    return tup(s("storage"), glob("torch", stype), s(key), s("cpu"), i(numel)) + b"Q"


REBUILD = glob("torch._utils", "_rebuild_tensor_v2")


def tensor(stor, offset=0, size=(4,), stride=(1,), rebuild=REBUILD):
    return call(rebuild, stor, i(offset), tup(*map(i, size)), tup(*map(i, stride)), b"\x89",
                call(glob("collections", "OrderedDict")))


def pkl(body, proto=2):
    return bytes([0x80, proto]) + body + b"."


FOUR = np.arange(4, dtype="<f4").tobytes()


def zip_pth(data_pkl, storages=None, extra=()):
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in (storages if storages is not None else {"0": FOUR}).items():
            zf.writestr(f"archive/data/{key}", raw)
        for name, raw in extra:
            zf.writestr(name, raw)
        zf.writestr("archive/version", "3\n")
    return f.getvalue()


def legacy_pth(obj_pkl, storages=None):
    """torch's legacy format: magic, protocol, sys info, the object, storage keys, storages."""
    f = io.BytesIO()
    for part in (weights.LEGACY_MAGIC, 1001, {"little_endian": True}):
        pickle.dump(part, f, protocol=2)
    f.write(obj_pkl)
    storages = storages if storages is not None else {"0": (4, FOUR)}
    pickle.dump(list(storages), f, protocol=2)
    for numel, raw in storages.values():
        f.write(struct.pack("<q", numel) + raw)
    return f.getvalue()


def write(tmp_path, data, name="evil.pth"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path, match, exc=weights.CheckpointError, max_bytes=8 << 20, reader=None):
    """Reading ``path`` raises ``exc`` matching ``match``, fast and with no big allocation."""
    reader = reader or weights.read_state_dict
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(exc, match=match) as e:
            reader(path)
        elapsed = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(e.value)
    assert peak < max_bytes, f"{peak} bytes allocated before refusing"
    assert elapsed < 2.0, f"took {elapsed:.2f} s to refuse"
    return e.value


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_hand_built_checkpoints_are_valid(tmp_path, fmt):
    # the assembler makes real checkpoints: each refusal below is caused by its one defect
    body = pkl(dct(model=odict(w=tensor(storage(), 1, (2,), (1,)),
                               t=tensor(storage(), 0, (2, 2), (1, 2))), epoch=i(3)))
    data = zip_pth(body) if fmt == "zip" else legacy_pth(body)
    sd = weights.read_state_dict(write(tmp_path, data))
    np.testing.assert_array_equal(sd["w"], [1, 2])
    np.testing.assert_array_equal(sd["t"], [[0, 2], [1, 3]])
    assert weights.load_torch(tmp_path / "evil.pth")["epoch"] == 3
    # one tensor object referenced twice (pickle memo) is built once, like torch.load
    shared = pkl(dct(a=tensor(storage()) + b"q\x07", b=b"h\x07"))
    sd = weights.read_state_dict(write(tmp_path, zip_pth(shared) if fmt == "zip"
                                       else legacy_pth(shared)))
    assert sd["a"] is sd["b"]


# --- look-alike globals -----------------------------------------------------------------------

LOOKALIKES = [
    ("torch._utils", "_rebuild_tensor_v2x"),
    ("torch._utils", "_rebuild_tensor_v"),  # a prefix of an allowed name
    ("torch._utils", "_rebuild_tensor_v2.__globals__"),  # an attribute path from an allowed one
    ("torch._utilsx", "_rebuild_tensor_v2"),  # the module name prefix-matches
    ("torch._utils.os", "system"),
    ("torch", "_utils"),
    ("torch", "FloatStoragex"),
    ("torch.cuda", "FloatStorage"),
    ("torchx", "FloatStorage"),
    ("collections", "OrderedDictx"),
    ("collections", "OrderedDict.fromkeys"),
    ("collectionsx", "OrderedDict"),
    ("collections.abc", "OrderedDict"),
    ("_collections", "OrderedDict"),
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "getattr"),
    ("torch", "load"),
]


@pytest.mark.parametrize("module,name", LOOKALIKES)
def test_look_alike_globals_are_refused(tmp_path, module, name):
    body = pkl(dct(model=odict(w=tensor(storage(), rebuild=glob(module, name)))))
    path = write(tmp_path, zip_pth(body))
    refused(path, f"refused to load global '{module}.{name}'", weights.UnsafeCheckpointError)


@pytest.mark.parametrize("opcode", ["STACK_GLOBAL", "INST"])
def test_other_global_opcodes_go_through_the_allow_list(tmp_path, opcode):
    marker = tmp_path / "marker"
    code = s(f"open({str(marker)!r}, 'w').close()")
    if opcode == "STACK_GLOBAL":  # protocol 4: module and name are strings on the stack
        body = pkl(s("builtins") + s("exec") + b"\x93" + tup(code) + b"R", proto=4)
    else:  # INST: module, name on text lines, arguments from the mark
        body = pkl(b"(" + code + b"ibuiltins\nexec\n")
    pickle.loads(body)  # live: an ordinary unpickler runs it
    assert marker.exists()
    marker.unlink()
    refused(write(tmp_path, zip_pth(body)), "refused to load global 'builtins.exec'",
            weights.UnsafeCheckpointError)
    assert not marker.exists()


@pytest.mark.parametrize("registered", [True, False])
def test_extension_opcodes_are_refused(tmp_path, registered):
    # EXT looks the global up in copyreg's process-wide registry; once any unpickler has used
    # the code, the stock unpickler takes the callable from a cache, without find_class
    marker = tmp_path / "marker"
    code = 0x7FFFFE01
    body = pkl(b"\x84" + struct.pack("<i", code) + tup(s(f"open({str(marker)!r}, 'w').close()"))
               + b"R")
    if registered:
        copyreg.add_extension("builtins", "exec", code)
    try:
        if registered:
            pickle.loads(body)  # live, and now cached
            assert marker.exists()
            marker.unlink()
        refused(write(tmp_path, zip_pth(body)), "EXT opcode", weights.UnsafeCheckpointError)
    finally:
        if registered:
            copyreg.remove_extension("builtins", "exec", code)
    assert not marker.exists()


# --- a REDUCE nested inside an allowed call ---------------------------------------------------

class _StubTorch(pickle.Unpickler):
    """An ordinary unpickler with torch's rebuild functions stubbed: shows a payload is live."""

    def find_class(self, module, name):
        if module == "torch._utils":
            return lambda *args: args
        if module == "torch":
            return name
        return super().find_class(module, name)


@pytest.mark.parametrize("inner", ["os.system", "builtins.eval", "builtins.exec"])
@pytest.mark.parametrize("outer", ["_rebuild_tensor_v2", "_rebuild_parameter"])
def test_reduce_nested_in_an_allowed_rebuild_is_refused(tmp_path, inner, outer):
    marker = tmp_path / "marker"
    cmd = {"os.system": f"touch {marker}",
           "builtins.eval": f"open({str(marker)!r}, 'w').close()",
           "builtins.exec": f"open({str(marker)!r}, 'w').close()"}[inner]
    payload = call(glob(*inner.split(".")), s(cmd))
    if outer == "_rebuild_tensor_v2":  # the storage argument is built by the payload
        body = pkl(dct(w=tensor(payload)))
    else:
        body = pkl(dct(w=call(glob("torch._utils", outer), payload, b"\x89", odict())))
    _StubTorch(io.BytesIO(body)).load()  # live: an ordinary unpickler runs the inner call
    assert marker.exists()
    marker.unlink()
    for data in (zip_pth(body), legacy_pth(body)):
        refused(write(tmp_path, data), f"refused to load global '{inner}'",
                weights.UnsafeCheckpointError)
        assert not marker.exists()


@pytest.mark.parametrize("arg,match", [
    (odict(), "tensor rebuilt from a OrderedDict, not a storage"),
    (tensor(storage()), "tensor rebuilt from a _LazyTensor, not a storage"),
    (s("0"), "tensor rebuilt from a str, not a storage"),
])
def test_allowed_calls_nested_with_wrong_arguments(tmp_path, arg, match):
    refused(write(tmp_path, zip_pth(pkl(dct(w=tensor(arg))))), match)


# --- BUILD on allowed classes -----------------------------------------------------------------

def _od_build(state):
    return pkl(dct(model=call(glob("collections", "OrderedDict")) + state + b"b"))


@pytest.mark.parametrize("state", [
    dct(keys=i(1)),  # shadows a method of the state dict
    dct(_metadata=odict(), items=s("x")),  # real metadata plus a smuggled attribute
    dct(__class__=s("x")),
    tup(dct(_metadata=odict()), dct(a=i(1))),  # (dict state, slot state)
    b"N",
])
def test_build_on_an_ordered_dict_only_takes_torch_metadata(tmp_path, state):
    body = _od_build(state)
    if state != b"N" and not state.startswith(b"("):
        od = pickle.loads(body)["model"]  # live: an ordinary unpickler sets the attributes
        assert set(vars(od)) - {"_metadata"}
    refused(write(tmp_path, zip_pth(body)), "refused to set OrderedDict state",
            weights.UnsafeCheckpointError)


def test_build_with_torch_metadata_is_accepted_and_dropped(tmp_path):
    # what torch.save(model.state_dict()) writes: BUILD {"_metadata": {...}} on the OrderedDict
    meta = odict(**{"": dct(version=i(1))})
    body = pkl(dct(model=odict(w=tensor(storage())) + dct(_metadata=meta) + b"b"))
    for data in (zip_pth(body), legacy_pth(body)):
        obj = weights.load_torch(write(tmp_path, data))
        assert not hasattr(obj["model"], "_metadata")
        np.testing.assert_array_equal(weights.flatten_state_dict(obj)["w"], [0, 1, 2, 3])


@pytest.mark.parametrize("target,name", [
    (tensor(storage()), "_LazyTensor"),  # the result of an allowed tensor rebuild
    (call(glob("torch._utils", "_rebuild_parameter"), tensor(storage()), b"\x89", odict()),
     "_LazyTensor"),
    (storage(), "_Storage"),  # the reader's storage object
    (glob("torch", "FloatStorage"), "_StorageType"),
])
def test_build_on_tensors_and_storages_is_refused(tmp_path, target, name):
    # e.g. moving a tensor's offset or swapping its storage after the geometry was parsed
    for state in (dct(offset=i(-8), size=tup(i(10**9))), dct(data=s("x"))):
        body = pkl(dct(w=target + state + b"b"))
        refused(write(tmp_path, zip_pth(body)), f"refused to set the state of a {name}",
                weights.UnsafeCheckpointError)


# --- tensor geometry: offsets, strides, sizes -------------------------------------------------

GEOMETRY = [  # (offset, size, stride) on a storage of 4 elements, and the reason
    (3, (2,), (1,), "reads past its storage of 4 elements"),  # offset + size past the end
    (4, (1,), (1,), "reads past its storage"),
    (0, (3,), (2,), "reads past its storage"),  # a stride that reads past the end
    (1, (2, 2), (2, 1), "reads past its storage"),
    (0, (2,), (2**62,), "reads past its storage"),
    (3, (2,), (-1,), "negative size, stride or offset"),  # a negative stride
    (0, (2, 2), (-2, 1), "negative size, stride or offset"),
    (-1, (2,), (1,), "negative size, stride or offset"),  # a negative offset
    (0, (-2,), (1,), "negative size, stride or offset"),
    (0, (2, 2), (1,), "different lengths"),
    (0, (10**12,), (1,), "reads past its storage"),  # 10^12 elements from 4
    (0, (10**6, 10**6), (0, 0), "expands its storage"),  # 10^12 elements, stride 0
    (0, (2**32, 2**32), (0, 0), "expands its storage"),  # 2^64: wraps to 0 in int64
]


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("offset,size,stride,match", GEOMETRY)
def test_tensor_geometry_outside_the_storage_is_refused(tmp_path, fmt, offset, size, stride,
                                                        match):
    body = pkl(dct(w=tensor(storage(), offset, size, stride)))
    refused(write(tmp_path, zip_pth(body) if fmt == "zip" else legacy_pth(body)), match)


def test_many_tensors_expanding_one_storage_are_refused_before_allocating(tmp_path):
    # each tensor is within the per-tensor limit (1024 x its 256-element storage), together
    # they would take 400 MB from 1 KB: refused before the first one is made
    n = 256
    entries = {f"t{k}": tensor(storage(numel=n), 0, (n * 1024,), (0,))
               for k in range(400)}
    body = pkl(dct(**entries))
    data = np.zeros(n, "<f4").tobytes()
    for raw in (zip_pth(body, {"0": data}), legacy_pth(body, {"0": (n, data)})):
        refused(write(tmp_path, raw), r"400 tensors would take 419430400 bytes from 1024 bytes")


# --- huge declared sizes: refused before any allocation ---------------------------------------

def test_storage_declaring_a_huge_size_is_refused_before_reading(tmp_path):
    body = pkl(dct(w=tensor(storage(numel=10**12))))
    refused(write(tmp_path, zip_pth(body)),
            r"holds 16 bytes, its storage declares 4000000000000")
    # legacy: the size is repeated before the bytes; the read would allocate 4 TB
    refused(write(tmp_path, legacy_pth(body, {"0": (10**12, FOUR)})),
            r"a record of 4000000000000 bytes at offset \d+ reaches past the end")
    refused(write(tmp_path, legacy_pth(pkl(dct(w=tensor(storage(numel=-1)))),
                                       {"0": (-1, FOUR)})), r"bad storage size -1")


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("record,match", [
    (b"\x96" + struct.pack("<Q", 10**12), "BYTEARRAY8 declares 1000000000000 bytes"),
    (b"\x8e" + struct.pack("<Q", 10**12), None),  # BINBYTES8
    (b"\x8d" + struct.pack("<Q", 10**12), None),  # BINUNICODE8
    (b"\x95" + struct.pack("<Q", 10**12), None),  # FRAME
])
def test_pickle_records_declaring_huge_lengths_are_refused(tmp_path, fmt, record, match):
    # the stock unpickler allocates bytearray(n) / file.read(n) for the declared n first
    body = b"\x80\x05" + record + b"."
    if fmt == "legacy":  # read from the file: refused before the read
        refused(write(tmp_path, legacy_pth(body)),
                r"a record of 1000000000000 bytes at offset \d+ reaches past the end")
    else:  # the pickle is in memory: reads come back short (BYTEARRAY8 no longer pre-allocates)
        refused(write(tmp_path, zip_pth(body)), match if record[0] == 0x96 else "unreadable")


def _patch_central_size(data, member, file_size, compress_size=None):
    """Set ``member``'s (uncompressed, compressed) sizes in the zip's central directory."""
    off = 0
    while True:
        off = data.index(b"PK\x01\x02", off)
        n, m, k = struct.unpack("<HHH", data[off + 28:off + 34])
        if data[off + 46:off + 46 + n].decode() == member:
            old = struct.unpack("<I", data[off + 20:off + 24])[0]
            sizes = struct.pack("<II", old if compress_size is None else compress_size,
                                file_size)
            return data[:off + 20] + sizes + data[off + 28:]
        off += 46 + n + m + k


def test_zip_members_declaring_sizes_the_archive_cannot_hold(tmp_path):
    body = pkl(dct(w=tensor(storage())))
    for member in ("archive/data/0", "archive/data.pkl"):
        data = _patch_central_size(zip_pth(body), member, 0xFFFFFFF0)
        assert zipfile.ZipFile(io.BytesIO(data)).getinfo(member).file_size == 0xFFFFFFF0
        refused(write(tmp_path, data), f"zip member '{member}' declares 4294967280 bytes .* "
                "cannot hold")
    # a stored member whose sizes agree but that claims more bytes than the whole archive
    data = _patch_central_size(zip_pth(body), "archive/data/0", 1 << 30, 1 << 30)
    refused(write(tmp_path, data), r"declares 1073741824 bytes \(1073741824 compressed\) that "
            r"a \d+-byte archive cannot hold")
    # deflate cannot expand more than ~1032x: a deflated member claiming more is refused
    # before it is decompressed; a real deflated checkpoint (zeros: ~1000x) still reads
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pkl(dct(w=tensor(storage(numel=1 << 18), 0, (1 << 18,)))))
        zf.writestr("archive/data/0", bytes(1 << 20))
    info = zipfile.ZipFile(f).getinfo("archive/data/0")
    assert info.file_size > 500 * info.compress_size  # a real zip bomb ratio
    assert weights.read_state_dict(write(tmp_path, f.getvalue()))["w"].shape == (1 << 18,)
    data = _patch_central_size(f.getvalue(), "archive/data/0", 2000 * info.compress_size)
    refused(write(tmp_path, data), "zip member 'archive/data/0' declares .* cannot hold")
    # compression methods torch and numpy never write (bzip2, lzma: unbounded ratios)
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("archive/data.pkl", body)
        zf.writestr("archive/data/0", FOUR)
    refused(write(tmp_path, f.getvalue()), "uses compression method 12; only stored or deflated")


def _safetensors(header, body=b"", length=None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


@pytest.mark.parametrize("data,match", [
    (_safetensors({}, length=2**64 - 1), "header length 18446744073709551615 is over"),
    (_safetensors({}, length=10**12), "header length 1000000000000 is over"),
    (_safetensors({}, length=10**6), "header length 1000000 exceeds the file size"),
    (_safetensors({"w": {"dtype": "F32", "shape": [10**6, 10**6],
                         "data_offsets": [0, 4 * 10**12]}}, FOUR), "inconsistent offsets"),
    (_safetensors({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}},
                  FOUR), "inconsistent offsets"),
    (_safetensors({"w": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}),
     "inconsistent offsets"),  # 2^64 elements: 0 bytes in int64 arithmetic
    (_safetensors({"w": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}}, FOUR),
     "bad shape"),
    (_safetensors({"w": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, FOUR),
     "bad shape"),
    (_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}, FOUR),
     "bad data_offsets"),
    (_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0]}}, FOUR),
     "bad data_offsets"),
    (_safetensors({"w": [1, 2]}, FOUR), "not an object"),
    (_safetensors({"w": {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}}, FOUR),
     "unsupported dtype"),
    (_safetensors([1, 2]), "not a JSON object"),
    (_safetensors(b"[" * 100_000), "not valid JSON"),
])
def test_safetensors_declared_sizes_are_checked_first(tmp_path, data, match):
    refused(write(tmp_path, data, "evil.safetensors"), match)


def _npy(shape, payload, dtype="<f4"):
    from numpy.lib import format as npy

    f = io.BytesIO()
    npy.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
    return f.getvalue() + payload


@pytest.mark.parametrize("shape", [(10**12,), (10**6, 10**6), (2**32, 2**32), (5,)])
def test_npz_shape_larger_than_its_data_is_refused_before_allocating(tmp_path, shape):
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("ok.npy", _npy((4,), FOUR))
        zf.writestr("w.npy", _npy(shape, FOUR))
    refused(write(tmp_path, f.getvalue(), "evil.npz"),
            rf"member 'w.npy' declares shape \({shape[0]},.* but holds 16 bytes")


# --- zip path traversal -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../evil", "archive/../../evil", "..\\evil", "ABSOLUTE",
                                  "/etc/evil", "\\evil", "C:/evil", "archive/data/../../../evil"])
@pytest.mark.parametrize("suffix", [".pth", ".npz"])
def test_zip_member_names_that_escape_are_refused(tmp_path, monkeypatch, name, suffix):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    target = tmp_path / "evil-target"
    name = str(target) if name == "ABSOLUTE" else name
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w") as zf:
        if suffix == ".pth":
            zf.writestr("archive/data.pkl", pkl(dct(w=tensor(storage()))))
            zf.writestr("archive/data/0", FOUR)
        else:
            zf.writestr("ok.npy", _npy((4,), FOUR))
        zf.writestr(name, b"pwned")
    assert name in zipfile.ZipFile(f).namelist()  # zipfile kept the name as written
    path = write(work, f.getvalue(), "evil" + suffix)
    before = sorted(p for p in tmp_path.rglob("*"))
    refused(path, "path traversal")
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not target.exists()


def test_pickle_and_storage_keys_that_escape_are_refused(tmp_path):
    # the pickle itself under "../", and a storage key that climbs out of archive/data/
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("../data.pkl", pkl(dct(w=i(1))))
    refused(write(tmp_path, f.getvalue()), "path traversal")
    for key in ("../../x", "a/b", "a\\b", ".x", ""):
        body = pkl(dct(w=tensor(storage(key=key))))
        refused(write(tmp_path, zip_pth(body, {"0": FOUR})), re.escape(f"bad storage key {key!r}"))


# --- object graphs: cycles, nesting, shared sub-dicts -----------------------------------------

def test_cycles_deep_nesting_and_shared_dict_bombs_are_refused(tmp_path):
    # a dict that contains itself (memo), lists nested 5000 deep, and 40 levels of a dict
    # shared twice: 2^40 entries when flattened, from a few hundred bytes
    cycle = pkl(b"}q\x00(" + s("self") + b"h\x00" + s("w") + tensor(storage()) + b"u")
    refused(write(tmp_path, zip_pth(cycle)), "contains itself")
    deep = pkl(b"]" * 5000 + b"a" * 4999)
    refused(write(tmp_path, zip_pth(deep)), "nested more than 100 deep")
    bomb = b"}q\x00(" + s("w") + tensor(storage()) + b"u0"
    for k in range(1, 41):
        bomb += b"}q" + bytes([k]) + b"(" + s("a") + b"h" + bytes([k - 1]) + s("b") + b"h" + \
            bytes([k - 1]) + b"u0"
    bomb = pkl(bomb[:-1])
    refused(write(tmp_path, zip_pth(bomb)), r"flattening would visit \d+ entries")
