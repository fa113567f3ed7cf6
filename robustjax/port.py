"""``robustjax port CHECKPOINT --model NAME --out FILE.npz``: convert PyTorch weights once.

Reads a timm / torchvision / facebookresearch checkpoint (``.pth``/``.pt``/``.safetensors``/
``.npz``) without torch, converts it with the model family's converter (strictly: any missing,
unexpected or mis-shaped key is an error unless ``--non-strict``) and writes

* ``FILE.npz``: the flax variables flattened to ``params/...`` / ``batch_stats/...`` keys, with
  the model name, spec and module overrides embedded (key ``__robustjax__``);
* ``FILE.json``: the same header as readable JSON (preprocessing: mean/std, input size,
  crop_pct, interpolation, class names).

``robustjax.models.load(NAME, "FILE.npz")`` then rebuilds exactly the same model with no
conversion. Existing outputs are never overwritten without ``--force``.

Example::

    robustjax port efficientnet-lite0-57934424.pth --model efficientnet_lite0 --out lite0.npz
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``port`` sub-command on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("port", help="convert a PyTorch checkpoint to robustjax params",
                              description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help=".pth/.pt/.safetensors/.npz state dict")
    p.add_argument("--model", required=True, help="zoo model name, e.g. convnext_tiny")
    p.add_argument("--out", required=True, help="output params file (.npz); FILE.json is the spec")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--num-classes", type=int, default=None, help="head size (e.g. 21841)")
    p.add_argument("--input-shape", default=None, help="H,W,C the model expects (e.g. 288,288,3)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help="module override, e.g. --set 'depths=[3,3,9,3]' (repeatable)")
    p.add_argument("--non-strict", action="store_true",
                   help="warn about keys that do not fit instead of failing")


def _parse_overrides(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        field, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare string
        out[field.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def run(args: argparse.Namespace) -> int:
    """Do the conversion described by parsed ``args``; returns the exit status."""
    from robustjax.models import loading

    out = pathlib.Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must end in .npz (robustjax params file), got {out}")
    spec_path = out.with_suffix(".json")
    existing = [str(p) for p in (out, spec_path) if p.exists()]
    if existing and not args.force:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (use --force)")
    overrides = _parse_overrides(args.set)
    input_shape = (tuple(int(v) for v in args.input_shape.split(","))
                   if args.input_shape else None)
    module, variables, spec, report = loading.load_variables(
        args.model, args.checkpoint, strict=not args.non_strict, num_classes=args.num_classes,
        input_shape=input_shape, **overrides)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = loading.save_params(out, args.model, variables, spec, overrides,
                                 overwrite=args.force)
    spec_path.write_text(json.dumps(header, indent=1) + "\n")
    n = sum(int(np.size(v)) for v in _leaves(variables.get("params", {})))
    print(f"ported {args.checkpoint} -> {out} ({args.model}, {n:,} parameters, "
          f"{spec.num_classes} classes); spec: {spec_path}")
    if not report.ok:
        print(f"warning: {report.describe()}", file=sys.stderr)
    return 0


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry point: ``python -m robustjax.port CHECKPOINT --model ... --out ...``."""
    parser = argparse.ArgumentParser(prog="robustjax port", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FileExistsError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"robustjax port: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
