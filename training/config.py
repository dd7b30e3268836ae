"""The settings of a training run, each with its command-line flag in one place (`option`): the
fields generate the flags, so help, defaults and checks cannot drift apart."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from birefnet import backbones
from birefnet.model import MIN_SIZE

# Validation scores training can choose the best epoch by (MetricSet keys without HCE, which validation skips).
BEST_METRICS = (
    "Sm",
    "meanEm",
    "maxEm",
    "adpEm",
    "maxFm",
    "meanFm",
    "adpFm",
    "wFm",
    "MAE",
    "mBA",
    "maxBIoU",
    "meanBIoU",
    "MSE",
)
LOWER_IS_BETTER = ("MAE", "HCE", "MSE")
SCRATCH_BACKBONE = "swin_v1_l"  # --init scratch without --backbone: the official default


def option(default=dataclasses.MISSING, help: str = "", **argparse_options):
    """A TrainConfig field and its command-line flag in one place: the flag, its help and its default
    are generated from here (`add_config_flags` in training/__main__.py), so the two cannot drift apart."""
    extra = {"default_factory": default} if callable(default) else {"default": default}
    return field(**extra, metadata={"help": help, **argparse_options})


@dataclass
class TrainConfig:
    data: list[str] = option(
        help="dataset folder(s), each with im/ (images) and gt/ (masks) matched by name", nargs="+"
    )
    out: str = option(help="run folder: checkpoints, resume.pt, metrics.jsonl")
    init: str = option(
        help="what to start from: a checkpoint file or known name to fine-tune (e.g. general, lite, "
        "after `birefnet download`), or 'scratch' (with --backbone)"
    )
    val: list[str] = option(list, help="validation dataset folder(s)", nargs="*")
    val_split: float = option(
        0.0,
        help="hold out this fraction of --data for validation when no --val (0 up to 1, drawn by a "
        "shuffle seeded by --seed over all --data folders together)",
    )
    best_metric: str = option(
        "Sm",
        help="validation score that picks best.safetensors (MAE, MSE: lower is better; the others higher)",
        choices=BEST_METRICS,
    )
    backbone: str | None = option(
        None,
        help=f"backbone for --init scratch (default then: {SCRATCH_BACKBONE}); a checkpoint --init has its own",
        choices=backbones.NAMES,
    )
    backbone_weights: str | None = option(
        None,
        help="pretrained weights for the --init scratch backbone: a file "
        "(timm's, torchvision's or the original release's layout) or "
        "'download' to fetch the official recipe's ImageNet/DINOv3 weights",
    )
    tile_layout: str | None = option(
        None,
        help="inward-reference tile layout; default: the --init checkpoint's own (current from scratch)",
        choices=("current", "legacy"),
    )
    task: str = option("general", help="loss preset of the official recipe", choices=("DIS", "general", "matting"))
    epochs: int = option(200, help="number of epochs")
    finetune_last_epochs: int | None = option(
        None,
        help="length in epochs of the late fine-tuning phase (BCE off, the other losses reweighted "
        "each epoch); -N, the official config's form, means the same; 0 turns it off; default: the "
        "task's official value (DIS 40, general 20, matting 10)",
    )
    batch_size: int = option(4, help="images per step (per process)")
    accumulate: int = option(1, help="gradient accumulation steps")
    size: tuple[int, int] = option((1024, 1024), help="training size: 1024 or WIDTHxHEIGHT", parse="size")
    dynamic_size: tuple[tuple[int, int], tuple[int, int]] | None = option(
        None,
        help=f"LO,HI: per batch, a random size from LO up to HI rounded down to a multiple of 32 "
        f"(LO at least {MIN_SIZE}), instead of --size",
        parse="range",
    )
    lr: float | None = option(None, help="learning rate; default: official (1e-4 DIS, else 1e-5) x sqrt(batch/4)")
    weight_decay: float = option(1e-2, help="AdamW weight decay")
    lr_decay_epochs: list[int] = option(
        list, help="epochs after which the learning rate is halved (the official lr_decay_rate, 0.5)", nargs="*"
    )
    precision: str = option(
        "fp32", help="autocast precision (fp16 with loss scaling)", choices=("fp32", "bf16", "fp16")
    )
    freeze_backbone: bool | None = option(
        None, help="train the decoder only; default: as the official recipe (frozen for DINOv3, trained for the others)"
    )
    freeze_batchnorm: bool | None = option(
        None,
        help="use BatchNorm running statistics; default: when batches hold one image (--no-freeze-batchnorm "
        "needs 2 or more)",
    )
    grad_checkpointing: bool = option(False, help="recompute backbone activations in backward (less memory)")
    compile: str | None = option(
        None,
        help="torch.compile the training forward with this backend: inductor (the "
        "official default; faster steps after minutes of compiling), or aot_eager "
        "(checks tracing, no speed-up)",
        choices=("inductor", "aot_eager"),
    )
    augment: bool = option(True, help="the official augmentations (flip, rotate, colour, pepper)")
    background_synthesis: bool = option(False, help="paste foregrounds on other backgrounds")
    crop: bool = option(False, help="add the official random centre crop augmentation")
    workers: int = option(0, help="data loader worker processes")
    seed: int = option(7, help="random seed (data order, augmentation, initialisation)")
    save_every: int = option(1, help="write epoch_N.safetensors every N epochs")
    val_every: int = option(1, help="validate every N epochs")
    max_steps_per_epoch: int | None = option(None, help="cut epochs short (quick trials)")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N, mps")
    tensorboard: bool = option(False, help="also log to TensorBoard in the run folder")

    def __post_init__(self):
        """Settings that cannot train refused up front, as one line, rather than as a division by
        zero after an epoch has run."""
        for name in ("epochs", "batch_size", "accumulate", "save_every", "val_every", "max_steps_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value}: use a whole number of 1 or more")
        self._check_sizes()
        self._check_starting_point()
        if not 0 <= self.val_split < 1:
            raise ValueError(f"--val-split {self.val_split}: use a fraction from 0 up to (not including) 1, e.g. 0.1")
        if self.workers < 0:
            raise ValueError(f"--workers {self.workers}: use 0 (load in the main process) or more")

    def _check_sizes(self) -> None:
        """The model takes multiples of 32 of at least MIN_SIZE a side: anything else would fail in
        the first step (--size) or draw sizes it cannot take (--dynamic-size), with no word of the flag."""
        height, width = self.size
        if height % 32 or width % 32 or min(height, width) < MIN_SIZE:
            nearest = lambda v: max(MIN_SIZE, round(v / 32) * 32)
            raise ValueError(
                f"--size {width}x{height}: use multiples of 32, at least {MIN_SIZE} a side, "
                f"e.g. {nearest(width)}x{nearest(height)}"
            )
        for low, high in self.dynamic_size or ():
            if low < MIN_SIZE or high <= low:
                raise ValueError(
                    f"--dynamic-size {low},{high}: use LO of at least {MIN_SIZE} and HI above it "
                    f"(each batch draws a size from LO up to HI, rounded down to a multiple of 32), e.g. 256,2304"
                )

    def _check_starting_point(self) -> None:
        """--backbone and --backbone-weights build a new model: with a checkpoint --init, whose backbone
        and weights are its own, they would be ignored without a word."""
        if self.init == "scratch":
            self.backbone = self.backbone or SCRATCH_BACKBONE
            return
        flags = (("--backbone", self.backbone), ("--backbone-weights", self.backbone_weights))
        given = [flag for flag, value in flags if value]
        if given:
            raise ValueError(
                f"{' and '.join(given)} only {'apply' if len(given) > 1 else 'applies'} to --init scratch; "
                f"--init {self.init} brings its own backbone "
                "and weights: leave them out, or use --init scratch"
            )

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return (1e-4 if self.task == "DIS" else 1e-5) * math.sqrt(self.batch_size / 4)
