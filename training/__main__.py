"""python -m birefnet_training {train, evaluate, best, synth, demo, recipe}: fine-tune, score, make data, ship the demo
model, measure the small-set fine-tuning recipe."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path

from birefnet.cli import run_command
from birefnet.files import atomic_path
from birefnet.inference import parse_size


def _range(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """'LO,HI' -> ((LO, HI), (LO, HI)): the height and width ranges of --dynamic-size."""
    try:
        lo, hi = map(int, text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use LO,HI, e.g. 256,2304") from None
    return (lo, hi), (lo, hi)


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


PARSERS = {"size": _size, "range": _range}


def _scalar_type(annotation: str):
    for name, kind in (("int", int), ("float", float)):
        if annotation.startswith((name, f"list[{name}]")):
            return kind
    return str


def add_config_flags(parser: argparse.ArgumentParser, config_class) -> None:
    """One flag per dataclass field, with the field's help, choices and default (shown in --help)."""
    for f in dataclasses.fields(config_class):
        options = dict(f.metadata)
        help_text = options.pop("help")
        parse = options.pop("parse", None)
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default_factory() if f.default is dataclasses.MISSING else f.default)
        if f.type.startswith("bool"):
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = PARSERS[parse] if parse else _scalar_type(f.type)
            if "choices" not in options:
                options.setdefault("metavar", f.name.upper())
        shown = "" if required or default is None or default == [] else f" (default: {_shown(default)})"
        parser.add_argument(flag, dest=f.name, required=required, default=default, help=help_text + shown, **options)


def _shown(value) -> str:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[1]}x{value[0]}"
    return str(value)


def cmd_train(args) -> int:
    from .config import TrainConfig
    from .trainer import train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    final = train(cfg, resume=not args.restart, stop_after_epoch=args.stop_after_epoch)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun: once, not once per process
        if final is None:
            print(f"training: nothing to do: {cfg.out} has already run past that epoch (raise --epochs to continue)")
        else:
            print(f"training: wrote {final}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_folders, evaluate_model
    from .metrics import format_table

    _check_evaluate_paths(args)
    if args.pred:
        metrics = evaluate_folders(
            args.pred, args.gt, metrics=args.metrics, workers=args.workers, hce_convention=args.hce_convention
        )
    else:
        metrics = evaluate_model(
            args.weights,
            args.data,
            save_pred=args.save_pred,
            tile_layout=args.tile_layout,
            metrics=args.metrics,
            hce_convention=args.hce_convention,
        )
    results = metrics.results()
    skipped = f", {len(metrics.skipped)} unreadable skipped" if metrics.skipped else ""
    print(format_table(results, f"{metrics.count} image(s){skipped}"))
    if args.json:
        with atomic_path(args.json, replace=False) as tmp:  # one written meanwhile is kept too
            tmp.write_text(json.dumps(results, indent=2))
    return 0


def _check_evaluate_paths(args) -> None:
    """Paths that would fail only after the whole evaluation (or as a traceback) refused first."""
    for flag, folder in (("--pred", args.pred), ("--gt", args.gt)):
        if folder and not Path(folder).is_dir():
            raise ValueError(f"{flag} {folder}: folder not found; name a folder of mask files")
    if args.json:
        target = Path(args.json)
        if target.is_dir():
            raise ValueError(f"--json {target} is a folder; name a file to write, e.g. {target / 'scores.json'}")
        if not target.parent.is_dir():
            raise ValueError(f"--json {target}: folder {target.parent} not found; create it or name another file")
        if target.exists():  # an earlier evaluation's scores: never replaced, as --save-pred's masks
            raise ValueError(f"--json {target} exists (an earlier evaluation's scores?): name another file")


def cmd_synth(args) -> int:
    from .synthetic import write_dataset

    if args.count < 1:
        raise ValueError(f"--count {args.count}: use a number of samples of 1 or more")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a new folder")
    existing = [sub for sub in ("im", "gt") if (out / sub).is_dir() and any((out / sub).iterdir())]
    if existing:
        raise ValueError(f"--out {out} already holds a dataset ({'/, '.join(existing)}/): name a new folder")
    write_dataset(args.out, args.count, args.seed, parse_size(args.size) if args.size else None)
    print(f"training: wrote {args.count} samples to {args.out}")
    return 0


def cmd_best(args) -> int:
    """Pick the best epoch of a run again, by another metric: copy its checkpoint to best.safetensors."""
    import shutil

    from .run_folder import BEST_FILE, LOG_FILE, best_epoch

    run = Path(args.run)
    if not (run / LOG_FILE).is_file():
        raise ValueError(f"{run}: no {LOG_FILE}; name the --out folder of a training run")
    numbered = (re.fullmatch(r"epoch_(\d+)\.safetensors", path.name) for path in run.glob("epoch_*.safetensors"))
    kept = {int(match[1]) for match in numbered if match}
    epoch = best_epoch(run / LOG_FILE, args.metric, among=kept)
    if epoch is None:
        raise ValueError(
            f"{run / LOG_FILE}: no kept epoch_N file has val_{args.metric} "
            "(train with --val or --val-split, and --save-every at most --val-every)"
        )
    overall = best_epoch(run / LOG_FILE, args.metric)
    if overall != epoch:
        print(f"training: epoch {overall} scored better but its file was not kept (--save-every)")
    source = run / f"epoch_{epoch}.safetensors"
    with atomic_path(run / BEST_FILE) as tmp:
        shutil.copyfile(source, tmp)
    print(f"training: epoch {epoch} is the best by val_{args.metric}: copied {source.name} to {run / BEST_FILE}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.work, install=args.install)
    return 0


def cmd_recipe(args) -> int:
    from .recipe import run_recipe

    run_recipe(args.work)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m birefnet_training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune (or train) BiRefNet on im/ + gt/ folders")
    from .config import BEST_METRICS, TrainConfig

    add_config_flags(t, TrainConfig)
    t.add_argument(
        "--restart",
        action="store_true",
        help="start over in --out: its earlier log, checkpoints and resume.pt are removed first",
    )
    t.add_argument("--stop-after-epoch", type=int, default=None, help="stop early (resumable) after this epoch")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="S/E/F-measures, weighted F, MAE, HCE, mBA, BIoU, MSE")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--pred", help="folder of predicted masks (matched to --gt by file name)")
    src.add_argument("--weights", help="segment --data with this model, then score")
    e.add_argument("--gt", help="folder of ground-truth masks (with --pred)")
    e.add_argument("--data", nargs="+", help="dataset folder(s) with im/ and gt/ (with --weights)")
    e.add_argument("--save-pred", help="also write the predicted masks here (with --weights)")
    e.add_argument("--tile-layout", default=None, choices=("current", "legacy"))
    e.add_argument("--json", help="write the scores as JSON")
    e.add_argument(
        "--metrics",
        nargs="+",
        metavar="NAME",
        help="a subset, by the official names: S E F WF MAE HCE MBA BIoU MSE (default: all)",
    )
    e.add_argument(
        "--hce-convention",
        choices=("pysod", "dis"),
        default="pysod",
        help="pysod: min-max normalise each prediction, then > 0.5 (default); dis: raw values > 128 "
        "(the DIS benchmark's and the official evaluator's HCE)",
    )
    e.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes scoring --pred folders (default: one per core, at most 8; same numbers as 1)",
    )
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("best", help="copy a run's best epoch (by a validation metric) to best.safetensors")
    b.add_argument("run", help="the run folder (--out of train)")
    b.add_argument("--metric", default="Sm", choices=BEST_METRICS, help="validation score to rank epochs by")
    b.set_defaults(func=cmd_best)

    s = sub.add_parser("synth", help="write a synthetic dataset (im/ + gt/)")
    s.add_argument("--out", required=True, help="a new folder (an existing dataset is never overwritten)")
    s.add_argument("--count", type=int, default=100, help="number of samples (default: 100)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", default=None, help="fixed size (default: random 224..416)")
    s.set_defaults(func=cmd_synth)

    d = sub.add_parser("demo", help="train the embedded demo model (pvt_v2_b0, synthetic data)")
    d.add_argument("--work", default="out/demo")
    d.add_argument("--install", action="store_true", help="copy the result to birefnet/weights/default.safetensors")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("recipe", help="measure the small-set fine-tuning recipe on a new object set (README table)")
    r.add_argument("--work", default="out/recipe")
    r.set_defaults(func=cmd_recipe)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "evaluate" and ((args.pred and not args.gt) or (args.weights and not args.data)):
        print("training: evaluate needs --pred with --gt, or --weights with --data", file=sys.stderr)
        return 2
    return run_command("training", args)  # one-line errors as `birefnet` gives them


if __name__ == "__main__":
    sys.exit(main())
