"""Make the small PyTorch checkpoint fixtures for the torch-free reader (needs torch).

Writes tests/fixtures/weights/:
  zip.pt       torch.save(obj)                                  (zip format, torch >= 1.6)
  legacy.pt    torch.save(obj, _use_new_zipfile_serialization=False)   (legacy run of pickles)
  expected.npz every tensor of obj["model"] as numpy (bfloat16 stored as float32)
where obj = {"model": OrderedDict(...), "epoch": 3, "note": "..."} holds every storage dtype the
reader supports, a transposed (non-contiguous) tensor, a slice with a storage offset, two
tensors sharing one storage, a 0-d tensor, an empty tensor and an nn.Parameter.

Run: PYTHONPATH=. python scripts/make_weights_fixtures.py
"""

from __future__ import annotations

import collections
import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/weights"


def build():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = collections.OrderedDict()
    sd["f32"] = torch.randn(2, 3, 4, 5, generator=g)
    sd["f64"] = torch.randn(3, generator=g, dtype=torch.float64)
    sd["f16"] = torch.randn(7, generator=g).half()
    sd["bf16"] = torch.randn(5, generator=g).bfloat16()
    sd["i64"] = torch.arange(-3, 9)
    sd["i32"] = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    sd["i16"] = torch.tensor([-7, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["transposed"] = base.t()  # strides (1, 6)
    sd["row_slice"] = base[2:]  # storage offset 12, shares base's storage
    sd["col_slice"] = base[:, 1::2]  # offset 1, strides (6, 2)
    sd["base"] = base
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    return {"model": sd, "epoch": 3, "note": "fixture"}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    obj = build()
    torch.save(obj, OUT / "zip.pt")
    torch.save(obj, OUT / "legacy.pt", _use_new_zipfile_serialization=False)
    expected = {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()
                               ).numpy() for k, v in obj["model"].items()}
    np.savez_compressed(OUT / "expected.npz", **expected)
    for name in ("zip.pt", "legacy.pt", "expected.npz"):
        print(name, (OUT / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
