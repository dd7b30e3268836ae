"""python -m training {train, evaluate, synth, demo}: fine-tune, score, make data, ship the demo model."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from birefnet.inference import parse_size
from birefnet.io import atomic_path


def _range(text: str) -> tuple[int, int]:
    lo, hi = map(int, text.split(","))
    return lo, hi


def cmd_train(args) -> int:
    from .trainer import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out, val=args.val or [], val_split=args.val_split, init=args.init,
        backbone=args.backbone, backbone_weights=args.backbone_weights, tile_layout=args.tile_layout,
        task=args.task, epochs=args.epochs, finetune_last_epochs=args.finetune_last_epochs,
        batch_size=args.batch_size, accumulate=args.accumulate, size=parse_size(args.size),
        dynamic_size=(args.dynamic_size, args.dynamic_size) if args.dynamic_size else None, lr=args.lr,
        precision=args.precision, freeze_backbone=args.freeze_backbone, grad_checkpointing=args.grad_checkpointing,
        augment=not args.no_augment, crop=args.crop, background_synthesis=args.background_synthesis, workers=args.workers,
        seed=args.seed, save_every=args.save_every, val_every=args.val_every,
        max_steps_per_epoch=args.max_steps_per_epoch, device=args.device, tensorboard=args.tensorboard,
    )
    final = train(cfg, resume=not args.restart, stop_after_epoch=args.stop_after_epoch)
    print(f"training: wrote {final}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_folders, evaluate_model
    from .metrics import format_table

    if args.pred:
        metrics = evaluate_folders(args.pred, args.gt)
    else:
        metrics = evaluate_model(args.weights, args.data, save_pred=args.save_pred, tile_layout=args.tile_layout)
    results = metrics.results()
    print(format_table(results, f"{metrics.count} image(s)"))
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=2))
    return 0


def cmd_synth(args) -> int:
    from .synthetic import write_dataset

    write_dataset(args.out, args.count, args.seed, parse_size(args.size) if args.size else None)
    print(f"training: wrote {args.count} samples to {args.out}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.work, install=args.install)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune (or train) BiRefNet on im/ + gt/ folders")
    t.add_argument("--data", nargs="+", required=True, help="dataset folder(s) with im/ and gt/")
    t.add_argument("--val", nargs="*", help="validation folder(s)")
    t.add_argument("--val-split", type=float, default=0.0, help="hold out this fraction when no --val")
    t.add_argument("--out", required=True, help="run folder: checkpoints, resume.pt, metrics.jsonl")
    t.add_argument("--init", default="scratch", help="checkpoint to fine-tune (any file birefnet reads) or 'scratch'")
    t.add_argument("--backbone", default="swin_v1_l", help="backbone for --init scratch")
    t.add_argument("--backbone-weights", help="ImageNet backbone file (timm or original layout), or 'timm' to download")
    t.add_argument("--tile-layout", default=None, choices=("current", "legacy"),
                   help="default: the --init checkpoint's own layout (current from scratch)")
    t.add_argument("--task", default="general", choices=("DIS", "general", "matting"))
    t.add_argument("--epochs", type=int, default=200)
    t.add_argument("--finetune-last-epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    t.add_argument("--size", default="1024", help="training size: 1024 or WIDTHxHEIGHT")
    t.add_argument("--dynamic-size", type=_range, help="LO,HI: random multiples of 32 per batch")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    t.add_argument("--freeze-backbone", action="store_true")
    t.add_argument("--grad-checkpointing", action="store_true")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--crop", action="store_true", help="add the official random centre crop augmentation")
    t.add_argument("--background-synthesis", action="store_true")
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--seed", type=int, default=7)
    t.add_argument("--save-every", type=int, default=1)
    t.add_argument("--val-every", type=int, default=1)
    t.add_argument("--max-steps-per-epoch", type=int, default=None)
    t.add_argument("--device", default="auto")
    t.add_argument("--tensorboard", action="store_true")
    t.add_argument("--restart", action="store_true", help="ignore an existing resume.pt in --out")
    t.add_argument("--stop-after-epoch", type=int, default=None, help="stop early (resumable) after this epoch")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="S/E/F-measures, weighted F, MAE, HCE")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--pred", help="folder of predicted masks (matched to --gt by file name)")
    src.add_argument("--weights", help="segment --data with this model, then score")
    e.add_argument("--gt", help="folder of ground-truth masks (with --pred)")
    e.add_argument("--data", nargs="+", help="dataset folder(s) with im/ and gt/ (with --weights)")
    e.add_argument("--save-pred", help="also write the predicted masks here (with --weights)")
    e.add_argument("--tile-layout", default=None, choices=("current", "legacy"))
    e.add_argument("--json", help="write the scores as JSON")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("synth", help="write a synthetic dataset (im/ + gt/)")
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", default=None, help="fixed size (default: random 224..416)")
    s.set_defaults(func=cmd_synth)

    d = sub.add_parser("demo", help="train the embedded demo model (pvt_v2_b0, synthetic data)")
    d.add_argument("--work", default="out/demo")
    d.add_argument("--install", action="store_true", help="copy the result to birefnet/weights/default.safetensors")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "evaluate" and ((args.pred and not args.gt) or (args.weights and not args.data)):
        print("training: evaluate needs --pred with --gt, or --weights with --data", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ValueError as err:  # DatasetError, CheckpointError and bad arguments: one line
        print(f"training: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
