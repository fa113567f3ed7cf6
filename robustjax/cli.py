"""The ``robustjax`` command line (flags only; the logic lives in the library)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _eps_list(text: str) -> tuple[float, ...]:
    """``"0.1,0.3"`` or ``"2/255,8/255"`` -> floats."""
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            num, _, den = part.partition("/")
            out.append(float(num) / (float(den) if den else 1.0))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad eps {part!r}: give comma-separated numbers or fractions, e.g. "
                "0.1,0.3 or 2/255,8/255") from None
    return tuple(out)


def _add_report(sub):
    from robustjax.report.run import SECTIONS

    p = sub.add_parser("report", help="run the robustness report (the main job)",
                       description="Evaluate a model (default: the embedded MNIST CNN, trained "
                       "and cached on first use; or any registry architecture with a checkpoint, "
                       "or your own Model factory) and write report.json and report.md. "
                       "Finished sections and batches are stored in OUT/store: rerunning an "
                       "interrupted report resumes it.")
    p.add_argument("--out", default="robustjax-report", help="output folder "
                   "(default: ./robustjax-report)")
    p.add_argument("--model", default=None,
                   help="architecture name (see `robustjax models`), or module:function / "
                   "path/to/file.py:function returning a robustjax Model (default: the "
                   "embedded MNIST CNN)")
    p.add_argument("--checkpoint", default=None,
                   help="weights for --model (.pth/.safetensors/.npz; a factory gets the path "
                   "as its argument)")
    p.add_argument("--dataset", default="mnist5k", help="evaluation dataset (default: mnist5k; "
                   "see `robustjax datasets`)")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--examples", type=int, default=None,
                   help="evaluate on the first N test examples (default: all; --quick: 64)")
    p.add_argument("--eps", type=_eps_list, default=None,
                   help="Linf radii of the attacks sweep in pixel units, e.g. 2/255,4/255,8/255 "
                   "(default: 0.05,0.1,0.2,0.3 for gray images, 1/255..8/255 for RGB)")
    p.add_argument("--resize", action="store_true",
                   help="resize the dataset's images (and convert gray <-> RGB) to the model's "
                   "input shape")
    p.add_argument("--sections", default=None,
                   help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument("--fresh", action="store_true",
                   help="recompute every section instead of loading stored results")
    p.add_argument("--retrain", action="store_true",
                   help="retrain the default model and replace its cached weights")
    p.add_argument("--force", action="store_true",
                   help="write into --out even if it holds files that are not a robustjax report")
    p.add_argument("--unrounded-corruptions", action="store_true",
                   help="evaluate corrupted images as unrounded floats instead of rounding them "
                   "to 8 bits as the stored ImageNet-C does (default: rounded)")
    _add_distributed(p, "Every process runs the report with the attacks, corruptions and "
                     "bounds sharded over all processes' devices; process 0 writes --out, the "
                     "others keep their stored results beside it (resumable per host)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from robustjax.report.run import run_report
    from robustjax.runtime import reuse_large_buffers

    reuse_large_buffers()  # the report is its own process: let XLA:CPU reuse its big buffers
    _start_distributed(args)  # before any JAX computation

    sections = args.sections.split(",") if args.sections else None
    run_report(args.out, model=args.model, checkpoint=args.checkpoint, dataset=args.dataset,
               split=args.split, examples=args.examples, quick=args.quick, seed=args.seed,
               sections=sections, eps=args.eps, resize=args.resize, retrain=args.retrain,
               fresh=args.fresh, force=args.force,
               quantize_corruptions=not args.unrounded_corruptions,
               log=lambda m: print(m, file=sys.stderr))
    return 0


def _add_datasets(sub):
    p = sub.add_parser("datasets", help="list the datasets robustjax can load",
                       description="List embedded and tfds datasets.")
    p.set_defaults(func=_run_datasets)


def _run_datasets(args) -> int:
    from robustjax import data

    for name in data.EMBEDDED:
        print(f"{name}\tembedded")
    for name in data.TFDS:
        print(f"{name}\ttensorflow-datasets (pip install 'robustjax[tfds]')")
    return 0


def _add_models(sub):
    p = sub.add_parser("models", help="list the model architectures",
                       description="List the names accepted by robustjax.models.create/load.")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from robustjax.models import MODELS

    for name, entry in sorted(MODELS.items()):
        spec = entry.spec
        print(f"{name}\tinput {tuple(spec.input_shape)}\tclasses {spec.num_classes}")
    return 0


def _add_ablate(sub):
    p = sub.add_parser("ablate", help="run an ablation study from an experiment file",
                       description="Train the full recipe and every leave-one-out variant of an "
                       "experiment (TOML) side by side, evaluate them and write ablation.json, "
                       "ablation.md and ablation.png; rerunning resumes.")
    p.add_argument("experiment", help="experiment TOML file, or the name of a shipped example "
                   "(mnist5k_pgd_at)")
    p.add_argument("--out", default=None, help="output folder (default: ./ablation-<name>)")
    p.add_argument("--force", action="store_true",
                   help="write into --out even if it holds other files or another experiment")
    p.add_argument("--sequential", action="store_true",
                   help="train every run alone (no vmap; the baseline)")
    _add_distributed(p, "Each process trains its share of the groups of runs and keeps their "
                     "files in its own --out (resumable per host); process 0 writes the table")
    p.set_defaults(func=_run_ablate)


def _add_distributed(p, what: str) -> None:
    p.add_argument("--distributed", action="store_true",
                   help="run as one process of a multi-host job (jax.distributed.initialize: "
                   "auto-detected on TPU pods, SLURM and Open MPI; else --coordinator, "
                   f"--num-processes, --process-id). {what}")
    p.add_argument("--coordinator", default=None, help="--distributed: host:port of process 0")
    p.add_argument("--num-processes", type=int, default=None, help="--distributed: processes")
    p.add_argument("--process-id", type=int, default=None, help="--distributed: this process")


def _start_distributed(args) -> None:
    """``jax.distributed.initialize`` for ``--distributed`` (before any JAX computation)."""
    if not getattr(args, "distributed", False):
        for flag in ("coordinator", "num_processes", "process_id"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} needs --distributed")
        return
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def _run_ablate(args) -> int:
    import os

    import tqdm

    from robustjax import experiments, parallel

    _start_distributed(args)
    path = args.experiment
    if not os.path.exists(path) and path in experiments.EXAMPLES:
        path = experiments.example_path(path)
    exp = experiments.load(path)
    out = args.out or f"ablation-{exp.name}"
    experiments.ablate(exp, out=out, force=args.force, vectorise=not args.sequential,
                       progress=lambda it, **kw: tqdm.tqdm(it, leave=False, **kw),
                       log=lambda m: tqdm.tqdm.write(m, file=sys.stderr))
    if parallel.is_coordinator():
        print(os.path.join(out, "ablation.md"))
    return 0


def _add_autoattack(sub):
    p = sub.add_parser("autoattack", help="AutoAttack robust accuracy (RobustBench-style entry)",
                       description="Run AutoAttack (Croce & Hein 2020) exactly as the reference "
                       "fra31/auto-attack defines its versions, on the embedded default model (or "
                       "--model with --checkpoint), and write a RobustBench-style JSON entry "
                       "(clean accuracy, robust accuracy, eps, norm, version, n examples). "
                       "Progress per attack and batch goes to stderr in the reference's log "
                       "format; --state makes it resumable (rerun the same command after an "
                       "interrupt).")
    p.add_argument("--eps", type=float, default=0.3,
                   help="radius in pixel units, images in [0, 1] (default 0.3, MNIST Linf; "
                   "CIFAR-10 usage: 8/255 Linf, 0.5 L2, 12 L1)")
    p.add_argument("--norm", default="linf",
                   help="threat model: linf, l2 or l1 (the reference's Linf, L2, L1 also work; "
                   "default linf)")
    p.add_argument("--version", default="standard",
                   help="standard: APGD-CE, APGD-T, FAB-T, Square (L1: APGD with 5 restarts / "
                   "5 targets and the decreasing-eps schedule, FAB-T, L1 Square); plus: APGD-CE, "
                   "APGD-DLR, FAB, Square, APGD-T, FAB-T; rand: APGD-CE, APGD-DLR with EOT over "
                   "20 draws (randomized defenses); custom: --attacks (default standard)")
    p.add_argument("--attacks", default=None,
                   help="comma list for --version custom, in cascade order, from apgd-ce, "
                   "apgd-dlr, fab, square, apgd-t, fab-t")
    p.add_argument("--dataset", default="mnist5k", help="evaluation dataset (default mnist5k)")
    p.add_argument("--examples", type=int, default=500, help="first N test examples (500)")
    p.add_argument("--batch-size", type=int, default=250,
                   help="examples per compiled batch (default 250, the reference's)")
    p.add_argument("--schedule", default="compact", choices=("compact", "mask"),
                   help="compact: gather the examples still robust into equal batches before "
                   "each attack (default, faster); mask: keep the fixed slices of the data")
    p.add_argument("--model", default=None, help="architecture name (robustjax models) of "
                   "--checkpoint (default: the embedded default model)")
    p.add_argument("--checkpoint", default=None, help="weights for --model")
    p.add_argument("--state", default=None, help="state file: written after every batch; an "
                   "existing one resumes the interrupted run")
    p.add_argument("--out", default="autoattack.json", help="JSON entry (autoattack.json)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the attacks (default 0)")
    _add_distributed(p, "Each process attacks its share of whole batches with its own "
                     "--state file (resumable per host); process 0 writes --out. Needs "
                     "--schedule mask")
    p.set_defaults(func=_run_autoattack)


def _run_autoattack(args) -> int:
    import json
    import os

    import jax

    from robustjax import data, runfiles
    from robustjax.attacks.autoattack import AutoAttackConfig
    from robustjax.report.autoattack import (
        run_autoattack,
        run_autoattack_sharded,
        write_entry,
    )

    _start_distributed(args)  # before any JAX computation
    attacks = tuple(args.attacks.split(",")) if args.attacks else None
    config = AutoAttackConfig(eps=args.eps, norm=args.norm, version=args.version,
                              attacks=attacks, batch_size=args.batch_size,
                              schedule=args.schedule)
    # before the model is loaded (or trained): both outputs can be written
    runfiles.preflight(os.path.dirname(os.path.abspath(args.out)), 0, f"--out {args.out}")
    if args.state:
        runfiles.preflight(os.path.dirname(os.path.abspath(args.state)), 0,
                           f"--state {args.state}")
    if args.model:
        from robustjax import models

        if not args.checkpoint:
            raise ValueError("--model needs --checkpoint (the weights to evaluate)")
        model = models.load(args.model, args.checkpoint)
    else:
        from robustjax.models import embedded_default

        model = embedded_default()
    x, y = data.load(args.dataset, "test")
    x, y = x[:args.examples], y[:args.examples]
    run = run_autoattack_sharded if args.distributed else run_autoattack
    entry = run(model, x, y, config, key=jax.random.key(args.seed),
                state_path=args.state, name=args.model or "embedded default",
                dataset=args.dataset, log=lambda m: print(m, file=sys.stderr))
    if jax.process_index() == 0:
        write_entry(args.out, entry)
    print(json.dumps({k: entry[k] for k in ("clean_acc", "autoattack_acc", "eps", "norm",
                                            "version", "n_ex")}))
    return 0


def _add_port(sub):
    from robustjax import port

    port.add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustjax", description="Measure and improve the robustness of vision models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_report(sub)
    _add_datasets(sub)
    _add_models(sub)
    _add_port(sub)
    _add_ablate(sub)
    _add_autoattack(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from robustjax.runfiles import OutputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError, FileExistsError, FileNotFoundError,
            ModuleNotFoundError, RuntimeError, OutputError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"robustjax {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
