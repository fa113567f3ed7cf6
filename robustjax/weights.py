"""Checkpoint readers that never need PyTorch and never run code from a file.

* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``: PyTorch ``torch.save`` files, both the zip format of
  torch >= 1.6 and the LEGACY format (a run of pickles: magic number, protocol version, system
  info, the object with persistent ids, the storage keys, then the raw storages). The pickles are
  read by a restricted unpickler that only resolves an allow-list of globals (tensor rebuild
  functions, storage types, ``collections.OrderedDict``); anything else raises
  :class:`UnsafeCheckpointError` naming the refused global, so loading can never run code.
* ``.safetensors``: 8-byte little-endian header length, a JSON header, raw little-endian bytes.
* ``.npz``: numpy archives, read with ``allow_pickle=False``.

Every size a file declares (storage and tensor sizes, strides and offsets, zip member sizes,
pickle record lengths, safetensors header and offsets, ``.npy`` shapes) is checked against the
bytes the file really holds before memory is allocated for it, and zip archives are never
extracted (member names with ``..`` or an absolute path are refused). See SECURITY.md.

``read_state_dict(path)`` returns a flat ``dict[str, np.ndarray]`` (``"layer.0.weight" -> array``)
with tensors as numpy arrays in PyTorch layout; converting layouts and names is the job of the
model families (``robustjax.models.loading``).

Example::

    sd = read_state_dict("efficientnet-lite0-57934424.pth")
    sd["_conv_stem.weight"].shape  # (32, 3, 3, 3)
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pathlib
import pickle
import struct
import zipfile
from typing import Any, Mapping, Optional

import ml_dtypes
import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Wrappers that training scripts put around a state dict (facebookresearch ConvNeXt: "model";
# RobustBench-era CIFAR training scripts: "state_dict", "model_state_dict").
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
# Prefixes every key gets from a wrapper module: ``nn.DataParallel`` ("module."), a model held
# as an attribute ("model.", RobustBench's ``normalize_model`` / ``rm_substr_from_state_dict``).
WRAPPER_PREFIXES = ("module.", "model.")
# Names of the per-channel normalisation buffers a model may carry inside (RobustBench:
# ``ImageNormalizer`` as ``normalize.mean`` / ``normalize.std``, Wong 2020's ``mu``/``sigma``,
# DeepMind's ``mean``/``std``).
NORMALIZATION_NAMES = (("mean", "std"), ("mu", "sigma"))
# Limits on what a file may make the reader allocate (see SECURITY.md). A tensor may expand its
# storage (stride 0, overlapping views) at most MAX_EXPANSION times; all the tensors of a file
# together at most MAX_TOTAL_EXPANSION times the storage bytes it holds, plus TOTAL_SLACK.
MAX_EXPANSION = 1024
MAX_TOTAL_EXPANSION = 16
TOTAL_SLACK = 256 << 20
MAX_NESTING = 100  # containers inside containers (a state dict needs 2 or 3)
MAX_ENTRIES = 1 << 20  # dict entries walked when flattening (a state dict has thousands)
SAFETENSORS_MAX_HEADER = 100_000_000  # the reference implementation's limit
DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data more than this


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed or of an unsupported format."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asked for a global outside the allow-list (it could run code)."""


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. during unpickling."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A typed flat buffer; ``data`` is filled when the raw bytes are read."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, int(numel), None

    def set_bytes(self, raw: bytes, where: str):
        nbytes = self.numel * self.dtype.itemsize
        if len(raw) != nbytes:
            raise CheckpointError(
                f"{where}: storage should hold {nbytes} bytes ({self.numel} x {self.dtype}), "
                f"found {len(raw)}; the file is truncated or corrupt.")
        self.data = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<")).astype(self.dtype)


class _LazyTensor:
    """A tensor view (offset, size, stride in elements) of a storage, made concrete later."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        if len(self.size) != len(self.stride):
            raise CheckpointError(f"bad tensor geometry: size {self.size} and stride "
                                  f"{self.stride} have different lengths")
        if any(s < 0 for s in self.size + self.stride) or self.offset < 0:
            raise CheckpointError(f"bad tensor geometry: negative size, stride or offset (size "
                                  f"{self.size}, stride {self.stride}, offset {self.offset})")
        self.numel = math.prod(self.size)  # python ints: no overflow
        self.nbytes = self.numel * storage.dtype.itemsize

    def check(self):
        """Refuse a view outside its storage or an absurd expansion; allocates nothing."""
        n = self.storage.numel
        if self.numel == 0:
            return
        # as_strided does not check bounds: we do (inside the storage, and no absurd expansion
        # of a small storage into a huge array).
        last = self.offset + sum((k - 1) * s for k, s in zip(self.size, self.stride))
        if last >= n:
            raise CheckpointError(
                f"tensor of size {self.size}, stride {self.stride} at offset {self.offset} "
                f"reads past its storage of {n} elements (up to element {last})")
        if self.numel > MAX_EXPANSION * max(n, 1):
            raise CheckpointError(
                f"tensor of size {self.size} ({self.numel} elements) expands its storage of "
                f"{n} elements more than {MAX_EXPANSION} times")

    def materialize(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise CheckpointError("a tensor refers to a storage whose bytes were never read")
        self.check()
        if self.numel == 0:
            return np.zeros(self.size, flat.dtype)
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], self.size, tuple(s * item for s in self.stride), writeable=False)
        return np.array(view, order="C")  # an owned, writable, C-contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    del unused  # requires_grad, backward_hooks, metadata: irrelevant for weights
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    del unused
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with an allow-list for globals and a restricted BUILD.

    Every way a pickle can reach a callable goes through ``find_class`` (GLOBAL, STACK_GLOBAL,
    INST); the EXT opcodes are refused (they resolve globals through copyreg's process-wide
    registry and cache, which can bypass ``find_class``). BUILD (``__setstate__`` / attribute
    updates) is only accepted on an ``OrderedDict`` with the state ``{"_metadata": ...}`` (torch
    attaches it to state dicts), and that state is dropped, so a pickle cannot mutate the
    reader's own objects. BYTEARRAY8 reads its bytes before allocating (the stock unpickler
    allocates the declared length first).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, persistent_load, where: str):
        super().__init__(file, encoding="latin1")
        self._persistent = persistent_load
        self._where = where

    def load_build(self):
        state = self.stack.pop()
        if type(self.stack[-1]) is not collections.OrderedDict:
            raise UnsafeCheckpointError(
                f"{self._where}: refused to set the state of a {type(self.stack[-1]).__name__} "
                f"(pickle BUILD); only OrderedDict state (torch's _metadata) is accepted")
        if not (type(state) is dict and set(state) <= {"_metadata"}):
            what = sorted(map(repr, state)) if type(state) is dict else type(state).__name__
            raise UnsafeCheckpointError(
                f"{self._where}: refused to set OrderedDict state {what} (pickle BUILD); only "
                f"torch's {{'_metadata': ...}} is accepted (and dropped)")

    dispatch[pickle.BUILD[0]] = load_build

    def load_ext(self):
        raise UnsafeCheckpointError(
            f"{self._where}: refused a pickle EXT opcode (a global looked up in copyreg's "
            f"extension registry); torch never writes them")

    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = load_ext

    def load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n)  # bounded by the bytes really there, unlike bytearray(n)
        if len(data) != n:
            raise CheckpointError(f"{self._where}: a pickle BYTEARRAY8 declares {n} bytes, "
                                  f"only {len(data)} follow; truncated or corrupt")
        self.append(bytearray(data))

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    del _op

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)  # a fresh object per reference: nothing shared to mutate
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in _ALLOWED))
            raise UnsafeCheckpointError(
                f"{self._where}: refused to load global '{module}.{name}'. The torch-free reader "
                f"only rebuilds tensors and containers (allowed: {allowed} and torch storage "
                f"types); executing this pickle could run arbitrary code. If you trust the file, "
                f"re-save it as a plain state dict or .safetensors with PyTorch.") from None

    def persistent_load(self, pid):
        return self._persistent(pid)


def _storage_pid(pid, where: str):
    """Parse ``('storage', storage_type, key, location, numel[, view_metadata])``."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
            and isinstance(pid[1], _StorageType)):
        raise CheckpointError(f"{where}: unsupported persistent id {pid!r} (expected a storage)")
    if len(pid) == 6 and pid[5] is not None:
        raise CheckpointError(f"{where}: storage views (view_metadata) are not supported")
    key = pid[2].decode() if isinstance(pid[2], bytes) else str(pid[2])
    if not key or "/" in key or "\\" in key or key.startswith("."):
        raise CheckpointError(f"{where}: bad storage key {key!r}")
    numel = pid[4]
    if type(numel) is not int or numel < 0:
        raise CheckpointError(f"{where}: bad storage size {numel!r} for storage {key!r}")
    return pid[1], key, numel


def _materialize(obj, storages: Mapping[str, "_Storage"], where: str):
    """Turn every tensor of ``obj`` into an array, after checking them all (nothing is allocated
    for a file whose tensors reach outside their storages or add up to too much); shared
    objects stay shared, cycles and absurd nesting are refused."""
    tensors: dict[int, _LazyTensor] = {}
    seen: set[int] = set()

    def collect(o, depth, path):
        if isinstance(o, _LazyTensor):
            tensors[id(o)] = o
            return
        if not isinstance(o, (dict, list, tuple)) or id(o) in seen:
            return
        if id(o) in path:
            raise CheckpointError(f"{where}: a {type(o).__name__} contains itself (a cycle)")
        if depth > MAX_NESTING:
            raise CheckpointError(f"{where}: containers nested more than {MAX_NESTING} deep")
        path.add(id(o))
        for v in (o.values() if isinstance(o, dict) else o):
            collect(v, depth + 1, path)
        path.discard(id(o))
        seen.add(id(o))

    collect(obj, 0, set())
    for t in tensors.values():
        t.check()
    stored = sum(s.numel * s.dtype.itemsize for s in storages.values())
    total = sum(t.nbytes for t in tensors.values())
    if total > MAX_TOTAL_EXPANSION * stored + TOTAL_SLACK:
        raise CheckpointError(
            f"{where}: its {len(tensors)} tensors would take {total} bytes from {stored} bytes "
            f"of storage (more than {MAX_TOTAL_EXPANSION}x + {TOTAL_SLACK >> 20} MiB)")
    memo: dict[int, Any] = {}

    def build(o):
        if id(o) in memo:
            return memo[id(o)]
        if isinstance(o, _LazyTensor):
            out = o.materialize()
        elif isinstance(o, dict):
            out = type(o)((k, build(v)) for k, v in o.items())
        elif isinstance(o, (list, tuple)):
            out = type(o)(build(v) for v in o)
        else:
            return o
        memo[id(o)] = out
        return out

    return build(obj)


def _unsafe_member_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return (name.startswith(("/", "\\")) or (name[1:2] == ":" and name[:1].isalpha())
            or ".." in parts)


def _check_zip(zf: zipfile.ZipFile, archive_size: int, where: str):
    """Refuse member names that would escape a folder if extracted (absolute, ``..``), and
    member sizes that the archive cannot hold; nothing is ever extracted."""
    for info in zf.infolist():
        if _unsafe_member_name(info.filename):
            raise CheckpointError(
                f"{where}: zip member name {info.filename!r} is an absolute path or climbs out "
                f"with '..' (path traversal); refusing the file")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"{where}: zip member {info.filename!r} uses compression "
                                  f"method {info.compress_type}; only stored or deflated")
        limit = (info.compress_size if info.compress_type == zipfile.ZIP_STORED
                 else DEFLATE_MAX_RATIO * info.compress_size + 64)
        if info.compress_size > archive_size or info.file_size > limit:
            raise CheckpointError(
                f"{where}: zip member {info.filename!r} declares {info.file_size} bytes "
                f"({info.compress_size} compressed) that a {archive_size}-byte archive cannot "
                f"hold; refusing before reading it")


def _read_member(zf: zipfile.ZipFile, name: str, where: str, nbytes: Optional[int] = None,
                 ) -> bytes:
    info = zf.getinfo(name)  # KeyError when missing
    if nbytes is not None and info.file_size != nbytes:
        raise CheckpointError(
            f"{where}: zip member {name!r} holds {info.file_size} bytes, its storage declares "
            f"{nbytes}; the file is truncated or corrupt")
    return zf.read(info)


class _BoundedReader:
    """A binary file that refuses reads past its end before allocating for them."""

    def __init__(self, f, size: int, where: str):
        self._f, self._size, self._where, self._pos = f, size, where, 0

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        if n is None or n < 0:
            n = left
        if n > left:
            raise CheckpointError(
                f"{self._where}: a record of {n} bytes at offset {self._pos} reaches past the "
                f"end of the file ({left} bytes left); truncated or corrupt")
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readline(self) -> bytes:
        line = self._f.readline()
        self._pos += len(line)
        return line


def _load_zip(path: pathlib.Path) -> Any:
    where = str(path)
    with zipfile.ZipFile(path) as zf:
        _check_zip(zf, path.stat().st_size, where)
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{where}: a zip but not a PyTorch checkpoint (no */data.pkl)")
        prefix = pkls[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
            raise CheckpointError(f"{where}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid):
            stype, key, numel = _storage_pid(pid, where)
            if key not in storages:
                storage = _Storage(stype.dtype, numel)
                try:
                    raw = _read_member(zf, f"{prefix}data/{key}", where,
                                       numel * stype.dtype.itemsize)
                except KeyError:
                    raise CheckpointError(
                        f"{where}: storage {key!r} missing from the zip") from None
                storage.set_bytes(raw, where)
                storages[key] = storage
            return storages[key]

        pkl = io.BytesIO(_read_member(zf, pkls[0], where))
        obj = _RestrictedUnpickler(pkl, persistent_load, where).load()
    return _materialize(obj, storages, where)


def _load_legacy(path: pathlib.Path) -> Any:
    where = str(path)
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
        stype, key, numel = _storage_pid(pid, where)
        if key not in storages:
            storages[key] = _Storage(stype.dtype, numel)
        return storages[key]

    def refuse(pid):
        raise CheckpointError(f"{where}: unexpected persistent id {pid!r} in the header")

    with open(path, "rb") as raw_file:
        f = _BoundedReader(raw_file, path.stat().st_size, where)
        header = lambda: _RestrictedUnpickler(f, refuse, where).load()  # noqa: E731
        magic = header()
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f"{where}: not a PyTorch checkpoint (bad magic number {magic!r})")
        protocol = header()
        if protocol != 1001:
            raise CheckpointError(f"{where}: unsupported legacy protocol {protocol!r} (want 1001)")
        sys_info = header()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{where}: big-endian checkpoints are not supported")
        obj = _RestrictedUnpickler(f, persistent_load, where).load()
        keys = header()
        for key in keys:
            key = key.decode() if isinstance(key, bytes) else str(key)
            if key not in storages:
                raise CheckpointError(f"{where}: storage {key!r} listed but never referenced")
            storage = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != storage.numel:
                raise CheckpointError(
                    f"{where}: storage {key!r} has {numel} elements on disk, {storage.numel} "
                    f"expected")
            storage.set_bytes(f.read(numel * storage.dtype.itemsize), where)
    return _materialize(obj, storages, where)


def load_torch(path) -> Any:
    """Read a ``torch.save`` file (zip or legacy) without torch; tensors become numpy arrays.

    Returns the saved object (usually an ``OrderedDict`` of arrays). Raises
    :class:`UnsafeCheckpointError` if the pickle references a global outside the allow-list.
    """
    path = _existing(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except CheckpointError as e:
        if str(path) in str(e):
            raise
        raise type(e)(f"{path}: {e}") from None  # tensor geometry errors: name the file
    except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile, ValueError,
            TypeError, IndexError, KeyError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable PyTorch checkpoint ({type(e).__name__}: {e})"
                              ) from None


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _is_count(v) -> bool:
    return type(v) is int and v >= 0


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file: ``u64`` little-endian header size, JSON header, bytes.

    The header is checked entirely (types, shapes, offsets inside the file) before the tensor
    bytes are read."""
    path = _existing(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8:
            raise CheckpointError(f"{path}: too short to be a .safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > SAFETENSORS_MAX_HEADER:
            raise CheckpointError(f"{path}: header length {n} is over the "
                                  f"{SAFETENSORS_MAX_HEADER}-byte limit of the format")
        if 8 + n > size:
            raise CheckpointError(f"{path}: header length {n} exceeds the file size {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({e})"
                                  ) from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: the safetensors header is a "
                                  f"{type(header).__name__}, not a JSON object")
        body_size = size - 8 - n
        entries = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(info, dict):
                raise CheckpointError(f"{path}: tensor {name!r}: header entry is not an object")
            if not isinstance(info.get("dtype"), str) or info["dtype"] not in _ST_DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype "
                                      f"{info.get('dtype')!r}; supported: {sorted(_ST_DTYPES)}")
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            shape, offsets = info.get("shape"), info.get("data_offsets")
            if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
                raise CheckpointError(f"{path}: tensor {name!r} has a bad shape {shape!r} "
                                      f"(want a list of non-negative integers)")
            if not (isinstance(offsets, list) and len(offsets) == 2
                    and all(_is_count(o) for o in offsets)):
                raise CheckpointError(f"{path}: tensor {name!r} has bad data_offsets "
                                      f"{offsets!r} (want [start, end])")
            start, end = offsets
            nbytes = math.prod(shape) * dtype.itemsize  # python ints: no overflow
            if not start <= end <= body_size or end - start != nbytes:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has inconsistent offsets {(start, end)} for shape "
                    f"{tuple(shape)} and dtype {dtype} ({nbytes} bytes; the file holds "
                    f"{body_size} bytes of data)")
            entries.append((name, dtype, tuple(shape), start, end))
        body = memoryview(f.read(body_size))
    out = {}
    for name, dtype, shape, start, end in entries:
        arr = np.frombuffer(body[start:end], dtype=dtype.newbyteorder("<")).astype(dtype)
        out[name] = arr.reshape(shape)
    return out


def _check_npz(path: pathlib.Path):
    """Check an ``.npz``'s member names and sizes and every ``.npy`` header's declared shape
    against the bytes the member holds, before numpy allocates the arrays."""
    from numpy.lib import format as npy

    where = str(path)
    with zipfile.ZipFile(path) as zf:
        _check_zip(zf, path.stat().st_size, where)
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as fp:
                version = npy.read_magic(fp)
                if version == (1, 0):
                    shape, _, dtype = npy.read_array_header_1_0(fp)
                elif version == (2, 0):
                    shape, _, dtype = npy.read_array_header_2_0(fp)
                else:
                    shape, _, dtype = npy._read_array_header(fp, version)
                header_len = fp.tell()
            if dtype.hasobject:
                raise CheckpointError(f"{where}: member {info.filename!r} holds Python objects "
                                      f"(it would need pickle); refused")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes != info.file_size - header_len:
                raise CheckpointError(
                    f"{where}: member {info.filename!r} declares shape {shape} of {dtype} "
                    f"({nbytes} bytes) but holds {info.file_size - header_len} bytes of data")


def read_npz(path) -> dict[str, np.ndarray]:
    """Read a ``.npz`` archive (no pickled objects allowed)."""
    path = _existing(path)
    try:
        _check_npz(path)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except CheckpointError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: unreadable .npz file ({e})") from None


def flatten_state_dict(obj: Any, where: str = "checkpoint", key: Optional[str] = None,
                       ) -> dict[str, np.ndarray]:
    """Unwrap ``{"model": sd}``-style wrappers and flatten nested dicts to dotted keys.

    ``key`` selects a sub-dict explicitly (e.g. ``"model_ema"`` or timm's ``"state_dict_ema"``);
    otherwise the first of ``WRAPPER_KEYS`` that holds tensors is used, else the whole object.
    """
    if key is not None:
        if not (isinstance(obj, Mapping) and key in obj):
            keys = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{where}: no entry {key!r} in the checkpoint (it has {keys})")
        return flatten_state_dict(obj[key], where)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping) and any(
                    isinstance(v, (np.ndarray, Mapping)) for v in obj[key].values()):
                return flatten_state_dict(obj[key], where)
    sizes: dict[int, int] = {}

    def count(o, depth):  # entries the walk will visit; once per shared dict: linear time
        if id(o) not in sizes:
            if depth > MAX_NESTING:
                raise CheckpointError(f"{where}: dicts nested more than {MAX_NESTING} deep "
                                      f"(or a dict that contains itself)")
            sizes[id(o)] = len(o) + sum(count(v, depth + 1) for v in o.values()
                                        if isinstance(v, Mapping))
        return sizes[id(o)]

    if isinstance(obj, Mapping) and count(obj, 0) > MAX_ENTRIES:
        # a dict shared n times at each of k levels flattens to n**k entries
        raise CheckpointError(f"{where}: flattening would visit {count(obj, 0)} entries (more "
                              f"than {MAX_ENTRIES}; shared sub-dicts?)")
    out: dict[str, np.ndarray] = {}

    def walk(o, prefix):
        if isinstance(o, np.ndarray):
            out[prefix] = o
        elif isinstance(o, Mapping):
            for k, v in o.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        # non-tensor entries (epoch counters, strings) are not weights: ignored.

    walk(obj, "")
    if not out:
        raise CheckpointError(f"{where}: no tensors found (got a {type(obj).__name__})")
    return strip_wrapper_prefixes(out)


def strip_wrapper_prefixes(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``module.`` / ``model.`` prefixes (in any nesting) while EVERY key carries one.

    ``{"module.model.conv1.weight": w}`` -> ``{"conv1.weight": w}``; a prefix only some keys
    have is a real submodule name and is kept.
    """
    out = dict(sd)
    while out:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in out)), None)
        if prefix is None:
            return out
        out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def split_normalization(sd: Mapping[str, Any]) -> tuple[dict[str, Any], Optional[tuple]]:
    """Take per-channel normalisation buffers out of a state dict.

    Finds ``<p>mean`` + ``<p>std`` (or ``<p>mu`` + ``<p>sigma``) where ``<p>`` is empty (buffers
    of the model itself) or one module name that holds nothing else (``normalize.``, or ``0.``
    of an ``nn.Sequential(Normalize, net)``); each buffer must hold one value per channel
    (shape ``(C,)``, ``(C, 1, 1)`` or ``(1, C, 1, 1)``). Returns the rest of the state dict, with
    the wrapper's prefixes (``model.``, the Sequential's ``1.``) stripped, and
    ``(mean, std)`` as tuples of floats, or ``None`` when there are no such buffers.

    Example: ``{"normalize.mean": m, "normalize.std": s, "model.fc.weight": w}`` ->
    ``({"fc.weight": w}, (tuple(m.ravel()), tuple(s.ravel())))``.
    """
    sd = dict(sd)
    for a, b in NORMALIZATION_NAMES:
        for key in sorted(k for k in sd if k.rsplit(".", 1)[-1] == a):
            prefix = key[: -len(a)]
            if prefix.count(".") > 1 or f"{prefix}{b}" not in sd:
                continue
            if prefix and any(k.startswith(prefix) for k in sd
                              if k not in (f"{prefix}{a}", f"{prefix}{b}")):
                continue  # a module with other tensors (not a normalisation layer)
            mean, std = np.asarray(sd[f"{prefix}{a}"]), np.asarray(sd[f"{prefix}{b}"])
            if not all(np.squeeze(v).ndim <= 1 and v.ndim <= 4 for v in (mean, std)):
                continue
            rest = {k: v for k, v in sd.items() if k not in (f"{prefix}{a}", f"{prefix}{b}")}
            if prefix[:-1].isdigit():  # nn.Sequential(Normalize, net): the net is the next index
                nxt = f"{int(prefix[:-1]) + 1}."
                if rest and all(k.startswith(nxt) for k in rest):
                    rest = {k[len(nxt):]: v for k, v in rest.items()}
            norm = (tuple(float(v) for v in mean.astype(np.float64).ravel()),
                    tuple(float(v) for v in std.astype(np.float64).ravel()))
            return strip_wrapper_prefixes(rest), norm
    return sd, None


def read_state_dict(path, key: Optional[str] = None) -> dict[str, np.ndarray]:
    """Read any supported checkpoint into a flat ``{name: np.ndarray}`` dict.

    ``key``: for ``torch.save`` files holding several dicts, the entry to use (see
    :func:`flatten_state_dict`).
    """
    path = _existing(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix == ".npz":
        return read_npz(path)
    if suffix in TORCH_SUFFIXES:
        return flatten_state_dict(load_torch(path), str(path), key)
    raise CheckpointError(f"{path}: unknown checkpoint format {suffix!r}; expected one of "
                          f"{', '.join(TORCH_SUFFIXES + ('.safetensors', '.npz'))}")


def _existing(path) -> pathlib.Path:
    path = pathlib.Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    return path
