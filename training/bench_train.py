"""Benchmark: one training step of this package against the official code's, same weights and batch.

    python -m birefnet_training.bench_train --official PATH/TO/BiRefNet --variant pvt_v2_b0 swin_v1_t --size 256 512

A step is forward, the official objective (pixel losses on every output plus the outward
reference's gradient loss, the official `DIS5K` preset = this package's `DIS`), backward and
an AdamW update. Each row runs in a fresh process (its peak memory is its own); both codes get
the same weights and the same batch, dropout and drop path are off in both (probability 0),
and the loss of the first step is printed for both: they agree to float precision. Prints median
seconds per step and steps per second.
`--compile` adds rows of this package's step under `torch.compile` (the official training
default; the first steps, which compile, are the warm-up and are timed apart). `--device cuda`
(default `$BIREFNET_DEVICE`, else cpu) runs the same table on a GPU; peak memory is then the
GPU's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def _batch(batch: int, size: int):
    from birefnet.inference import normalise, to_rgb_tensor

    from .synthetic import make_sample

    images, masks = [], []
    for i in range(batch):
        image, mask = make_sample(11, i, (size, size))
        images.append(normalise(to_rgb_tensor(image)[None])[0])
        masks.append(to_rgb_tensor(mask)[:1])
    return torch.stack(images), torch.stack(masks)


def _without_randomness(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout and drop path off (probability 0, same ops) so that both codes see the same function
    and their losses can be compared; the step's cost is unchanged."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    return model


def _official_step(args, state_dict, images, masks):
    """The official objective around the official model (its own PixLoss; BCE of the gradient maps)."""
    from birefnet import model_to_official_keys
    from birefnet.bench import official_model

    model = official_model(args.official, args.variant)
    model.load_state_dict(model_to_official_keys(state_dict, args.variant))
    _without_randomness(model).train().to(images.device)
    pix_loss = importlib.import_module("loss").PixLoss()
    bce = torch.nn.BCELoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    interpolate = torch.nn.functional.interpolate

    def step():
        optimizer.zero_grad()
        (gradient_preds, gradient_labels), side_outputs = model(images)[0]
        loss = sum(
            bce(interpolate(pred, size=label.shape[2:], mode="bilinear", align_corners=True).sigmoid(), label.sigmoid())
            for pred, label in zip(gradient_preds, gradient_labels)
        )
        loss = loss + pix_loss(side_outputs, masks.clamp(0, 1))[0]
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def _our_step(args, state_dict, images, masks):
    from birefnet.model import build_model

    from .losses import birefnet_loss, loss_weights

    model = build_model(args.variant)
    model.load_state_dict(state_dict)
    _without_randomness(model).train().to(images.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    weights = loss_weights("DIS", 1, 10**6)
    forward = torch.compile(model) if args.code == "compiled" else model

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            out = forward(images)
        result = birefnet_loss(out, images, masks, weights)
        result.total.backward()
        optimizer.step()
        return float(result.total)

    return step


def _worker(args) -> dict:
    from birefnet.model import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    state_dict = build_model(args.variant).state_dict()  # the same weights for both codes
    device = torch.device(args.device)
    images, masks = (t.to(device) for t in _batch(args.batch, args.size))
    make = _official_step if args.code == "official" else _our_step
    step = make(args, state_dict, images, masks)
    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        losses.append(step())  # float() waits for the device
        times.append(time.perf_counter() - start)
    median = statistics.median(times[args.warmup :])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {"median_s": median, "first_loss": losses[0], "warmup_s": sum(times[: args.warmup]), "peak_gb": peak}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m birefnet_training.bench_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--official", required=True, metavar="DIR", help="a checkout of ZhengPeng7/BiRefNet")
    parser.add_argument("--variant", nargs="+", default=["pvt_v2_b0", "swin_v1_t"])
    parser.add_argument("--size", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--dtype", nargs="+", default=["fp32"], choices=("fp32", "bf16"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default=os.environ.get("BIREFNET_DEVICE", "cpu"))
    parser.add_argument("--compile", action="store_true", help="also time this package's step under torch.compile")
    parser.add_argument("--worker", nargs=4, metavar=("CODE", "VARIANT", "SIZE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.code, args.variant, args.size, args.dtype = (
            args.worker[0],
            args.worker[1],
            int(args.worker[2]),
            args.worker[3],
        )
        print(json.dumps(_worker(args)))
        return 0
    print(
        f"# training step on {args.device}, batch {args.batch}, {args.threads} threads, "
        f"median of {args.steps} after {args.warmup} (warm-up seconds in their column)"
    )
    print("| variant | size | dtype | code | s / step | steps / s | vs official | first loss | warm-up s | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    codes = ("official", "this package") + (("compiled",) if args.compile else ())
    for variant in args.variant:
        for size in args.size:
            for dtype in args.dtype:
                base = None
                for code in codes:
                    if code == "official" and dtype != "fp32":
                        continue  # the official code has no bf16 deformable convolution
                    cmd = [
                        sys.executable,
                        "-m",
                        "birefnet_training.bench_train",
                        "--official",
                        args.official,
                        "--batch",
                        str(args.batch),
                        "--steps",
                        str(args.steps),
                        "--warmup",
                        str(args.warmup),
                        "--threads",
                        str(args.threads),
                        "--device",
                        args.device,
                        "--worker",
                        code.split()[0],
                        variant,
                        str(size),
                        dtype,
                    ]
                    result = subprocess.run(cmd, capture_output=True, text=True)
                    if result.returncode:
                        reason = (result.stderr.strip().splitlines() or ["failed"])[-1][:150]
                        print(f"| {variant} | {size} | {dtype} | {code} | failed: {reason} | | | | | |", flush=True)
                        continue
                    r = json.loads(result.stdout.strip().splitlines()[-1])
                    base = r["median_s"] if code == "official" else base
                    ratio = f"{base / r['median_s']:.2f}x" if base else ""
                    print(
                        f"| {variant} | {size} | {dtype} | {code} | {r['median_s']:.3f} | {1 / r['median_s']:.2f} "
                        f"| {ratio} | {r['first_loss']:.4f} | {r['warmup_s']:.1f} | {r['peak_gb']:.2f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
