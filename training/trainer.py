"""Fine-tune or train BiRefNet: the official recipe (AdamW, multi-stage losses, late
fine-tuning phase), mixed precision, gradient accumulation, DistributedDataParallel,
atomic checkpoints and exact resumption.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from birefnet import BiRefNet, backbones, build_model, load_model, save_checkpoint
from birefnet.device import resolve_device
from birefnet.files import atomic_path

from .data import Augment, SegmentationDataset, SizedBatchSampler, collate, find_backgrounds, find_pairs
from .losses import birefnet_loss, finetune_phase_length, loss_weights
from .metrics import METRICS, MetricSet

log = logging.getLogger(__name__)
RESUME_FILE = "resume.pt"
BEST_FILE = "best.safetensors"
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
LOG_FILE = "metrics.jsonl"
# Settings a resumed run must share with the run that wrote resume.pt: they decide the model, the
# data and the optimisation. The others (--epochs to extend a run, --device, --workers, --save-every,
# --best-metric, ...) may change between starts.
PATH_SETTINGS = ("data", "init", "val", "backbone_weights")  # compared as the places they name
RESUME_SETTINGS = (
    "data",
    "init",
    "val",
    "val_split",
    "backbone",
    "backbone_weights",
    "tile_layout",
    "task",
    "finetune_last_epochs",
    "batch_size",
    "accumulate",
    "size",
    "dynamic_size",
    "lr",
    "weight_decay",
    "lr_decay_epochs",
    "precision",
    "freeze_backbone",
    "freeze_batchnorm",
    "augment",
    "background_synthesis",
    "crop",
    "seed",
    "max_steps_per_epoch",
)
# What a run writes to its folder: a folder holding one of these and no resume.pt holds another run.
RUN_OUTPUTS = (LOG_FILE, "final.safetensors", BEST_FILE, "epoch_*.safetensors")


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
        help="validation score that picks best.safetensors (MAE, HCE, MSE: lower is better; the others higher)",
        choices=BEST_METRICS,
    )
    backbone: str = option("swin_v1_l", help="backbone for --init scratch", choices=backbones.NAMES)
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
        None, help="LO,HI: a random multiple of 32 in this range per batch, instead of --size", parse="range"
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
    freeze_batchnorm: bool | None = option(None, help="use BatchNorm running statistics; default: when batch size is 1")
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
        if min(self.size) < 32:
            raise ValueError(f"--size {self.size[1]}x{self.size[0]}: use at least 32 pixels a side, e.g. 1024")
        if not 0 <= self.val_split < 1:
            raise ValueError(f"--val-split {self.val_split}: use a fraction from 0 up to (not including) 1, e.g. 0.1")
        if self.workers < 0:
            raise ValueError(f"--workers {self.workers}: use 0 (load in the main process) or more")

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return (1e-4 if self.task == "DIS" else 1e-5) * math.sqrt(self.batch_size / 4)


def _distributed(device: str) -> tuple[int, int]:
    """(rank, world) under torchrun. NCCL only when the run uses CUDA: CPU tensors (--device cpu on a
    GPU machine) need gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        torch.distributed.init_process_group("nccl" if on_cuda else "gloo")
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def _device(name: str, rank: int) -> torch.device:
    if name != "auto":
        return resolve_device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def build_initial_model(cfg: TrainConfig) -> BiRefNet:
    if cfg.init == "scratch":
        model = build_model(cfg.backbone, tile_layout=cfg.tile_layout or "current")
        if cfg.backbone_weights:
            from .pretrained import load_backbone_weights

            load_backbone_weights(model, cfg.backbone_weights)
        else:
            log.warning(
                "the %s backbone starts from random weights (no --backbone-weights): training from scratch "
                "needs far more data and time than fine-tuning an official checkpoint (--init general)",
                cfg.backbone,
            )
        return model
    return load_model(cfg.init, tile_layout=cfg.tile_layout)


def _freeze_batchnorm(model: nn.Module) -> None:
    """Use running statistics (batch size 1 has none of its own); affine terms still train."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _remove_stale_temporaries(folder: Path) -> None:
    """A run killed while writing leaves `.NAME.XXXXXXXX.tmp.EXT` files (atomic writes); a new start
    clears them. Only this pattern: nothing else in the run folder is touched."""
    for stale in folder.glob(".*.tmp.*"):
        if stale.is_file() and re.fullmatch(r"\..+\.[0-9a-f]{8}\.tmp\.[A-Za-z0-9]+", stale.name):
            log.info("removing %s, left by an interrupted write", stale.name)
            stale.unlink(missing_ok=True)


def split_validation(pairs: list, fraction: float, seed: int) -> tuple[list, list]:
    """(training, validation) pairs: `fraction` of them (at least one) held out, drawn by a
    shuffle seeded by `seed` over all --data folders together, so that validation is not the
    last folder's last files; each part keeps the listing order."""
    cut = max(1, int(len(pairs) * fraction))
    if cut >= len(pairs):
        raise ValueError(
            f"--val-split {fraction} of {len(pairs)} pair(s) leaves nothing to train on: "
            "use a smaller --val-split, more data, or --val FOLDER"
        )
    held = set(np.random.default_rng([seed, 1 << 22]).permutation(len(pairs))[:cut].tolist())
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world = _distributed(cfg.device)
        self.device = _device(cfg.device, self.rank)
        if self.world > 1 and self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL collectives of objects (the RNG states) use the current GPU
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            _remove_stale_temporaries(self.out)
        torch.manual_seed(cfg.seed + self.rank)

        pairs = find_pairs(cfg.data)
        val_pairs = find_pairs(cfg.val) if cfg.val else []
        if cfg.val_split and not val_pairs:
            pairs, val_pairs = split_validation(pairs, cfg.val_split, cfg.seed)
        augment = Augment(crop=cfg.crop, background_synthesis=cfg.background_synthesis) if cfg.augment else None
        backgrounds = find_backgrounds(cfg.data)
        self.train_set = SegmentationDataset(pairs, augment, cfg.seed, backgrounds)
        self.val_set = (
            SegmentationDataset(val_pairs, None, cfg.seed, find_backgrounds(cfg.val) or backgrounds)
            if val_pairs
            else None
        )
        self.sampler = SizedBatchSampler(
            len(pairs), cfg.batch_size, cfg.size, cfg.dynamic_size, cfg.seed, rank=self.rank, world=self.world
        )
        if len(self.sampler) == 0:
            raise ValueError(f"{len(pairs)} training pairs make no full batch of {cfg.batch_size} per rank")

        self.model = build_initial_model(cfg).to(self.device)
        if cfg.grad_checkpointing:
            self.model.bb.set_grad_checkpointing(True)
        self.frozen_backbone = cfg.freeze_backbone if cfg.freeze_backbone is not None else self.model.variant.frozen
        if self.frozen_backbone:
            self.model.bb.requires_grad_(False)
        self.freeze_bn = cfg.freeze_batchnorm if cfg.freeze_batchnorm is not None else cfg.batch_size == 1
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, cfg.lr_decay_epochs or [100000], 0.5)
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.net = self.model
        if self.world > 1:
            # PVT's depthwise (C, 1, 3, 3) weights get gradients whose size-1 dimension has stride 1 from
            # the CPU backward (9 in the weight): the same memory layout, but DDP's reducer compares strides
            # literally and warns "grad strides do not match bucket view strides" on every step, about a
            # copy of a few KB. Nothing to fix in the model's layout; the warning is silenced.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.net = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.frozen_backbone,
            )
        if cfg.compile:  # around DDP, so that its hooks stay outside the compiled graph
            self.net = torch.compile(self.net, backend=cfg.compile)
        self.start_epoch = 1
        phase = finetune_phase_length(cfg.task, cfg.finetune_last_epochs)
        if phase and cfg.epochs <= phase:
            log.warning(
                "the late fine-tuning phase (last %d epochs) covers the whole %d-epoch run, so BCE is off "
                "from epoch 1; set --finetune-last-epochs (0 disables it)",
                phase,
                cfg.epochs,
            )
        self.writer = None
        if cfg.tensorboard and self.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; logging to %s only", LOG_FILE)

    # ------------------------------------------------------------------ state

    def rng_states(self) -> list[dict]:
        """Every rank's random-generator states (a collective under DDP: all ranks call it).
        Ranks draw different dropout/drop-path masks, so an exact resume needs each one's own."""
        own = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world == 1:
            return [own]
        states: list = [None] * self.world
        torch.distributed.all_gather_object(states, own)
        return states

    def save_resume(self, epoch: int, rng: list[dict]) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "rng": rng,
            "config": json.dumps(asdict(self.cfg)),
        }
        with atomic_path(self.out / RESUME_FILE) as tmp:
            torch.save(state, tmp)

    def resume(self) -> bool:
        """Continue from out/resume.pt when it exists; True if it did."""
        path = self.out / RESUME_FILE
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)  # settings checked by train() first
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state.get("rng") or [{"torch": state["torch_rng"]}]  # files of earlier versions kept rank 0's only
        if len(rng) != self.world and self.rank == 0:
            log.warning(
                "%s was written by %d process(es), this run has %d: the random streams restart per rank, "
                "so the result will differ from an uninterrupted run",
                path,
                len(rng),
                self.world,
            )
        own = rng[self.rank % len(rng)]
        torch.set_rng_state(own["torch"])
        if "cuda" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], self.device)
        self.start_epoch = state["epoch"] + 1
        self._trim_log(state["epoch"])
        log.info("resumed from %s after epoch %d", path, state["epoch"])
        return True

    def _trim_log(self, epoch: int) -> None:
        """Keep the log's records of epochs the resumed state has seen: a run stopped after
        writing epoch N's record but before its resume state repeats epoch N."""
        path = self.out / LOG_FILE
        if self.rank != 0 or not path.is_file():
            return
        kept = [record for record in read_log(path) if record.get("epoch", 0) <= epoch]
        write_log(path, kept)

    # ------------------------------------------------------------------ loop

    def _loader(self, dataset, sampler):
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.cfg.workers,
            generator=torch.Generator().manual_seed(0),
        )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        cfg = self.cfg
        self.sampler.epoch = self.train_set.epoch = epoch
        weights = loss_weights(cfg.task, epoch, cfg.epochs, cfg.finetune_last_epochs)
        self.net.train()
        if self.freeze_bn:
            _freeze_batchnorm(self.model)
        sums: dict[str, float] = {}
        steps = (
            len(self.sampler) if cfg.max_steps_per_epoch is None else min(len(self.sampler), cfg.max_steps_per_epoch)
        )
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", disable=self.rank != 0, leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        for step, (images, masks, labelled, _) in enumerate(self._loader(self.train_set, self.sampler)):
            if step >= steps:
                break
            images, masks = images.to(self.device), masks.to(self.device)
            labelled = None if labelled is None else labelled.to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.net(images)
            result = birefnet_loss(out, images, masks, weights, labelled)
            self.scaler.scale(result.total / cfg.accumulate).backward()
            if (step + 1) % cfg.accumulate == 0 or step + 1 == steps:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
            for name, value in {"loss": float(result.total.detach()), **result.terms}.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}")
            bar.update(1)
        bar.close()
        self.scheduler.step()
        means = {k: v / steps for k, v in sums.items()}
        if self.world > 1:  # the epoch's figures over all ranks, not rank 0's share
            values = torch.tensor(list(means.values()), dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(values)
            means = dict(zip(means, (values / self.world).tolist()))
        return means

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        metrics = MetricSet([name for name in METRICS if name != "HCE"])
        sampler = SizedBatchSampler(
            len(self.val_set), self.cfg.batch_size, self.cfg.size, None, shuffle=False, drop_last=False
        )
        for images, masks, labelled, _ in self._loader(self.val_set, sampler):
            probs = torch.sigmoid(self.model(images.to(self.device)).float()).cpu()
            for i, (prob, mask) in enumerate(zip(probs, masks)):
                metrics.step(prob[0], mask[0], void=None if labelled is None else (labelled[i, 0] < 0.5).numpy())
        return metrics.results()

    def run(self, stop_after_epoch: int | None = None) -> Path | None:
        """Train to `cfg.epochs` (or stop after `stop_after_epoch`, resumable later); the last checkpoint,
        or None when no epoch was left to run (a resumed run already past that point)."""
        cfg = self.cfg
        final = self.out / "final.safetensors"
        last = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, stop_after_epoch)
        if last < self.start_epoch:
            return None
        if self.start_epoch == 1 and self.rank == 0:
            remove_run_outputs(self.out)
        for epoch in range(self.start_epoch, last + 1):
            started = time.time()
            record = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], **self.train_epoch(epoch)}
            if self.rank == 0:
                if self.val_set is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
                    record.update({f"val_{k}": v for k, v in self.validate().items()})
                record["seconds"] = round(time.time() - started, 2)
                write_log(self.out / LOG_FILE, [*read_log(self.out / LOG_FILE), record])
                if self.writer is not None:
                    for key, value in record.items():
                        if key != "epoch":
                            self.writer.add_scalar(key, value, epoch)
                log.info("epoch %d: %s", epoch, summary(record))
                resolution = None if cfg.dynamic_size else tuple(cfg.size)
                if epoch % cfg.save_every == 0 or epoch == cfg.epochs:
                    save_checkpoint(self.model, self.out / f"epoch_{epoch}.safetensors", resolution=resolution)
                if epoch == cfg.epochs:
                    save_checkpoint(self.model, final, resolution=resolution)
                if best_epoch(self.out / LOG_FILE, cfg.best_metric) == epoch:
                    save_checkpoint(self.model, self.out / BEST_FILE, resolution=resolution)
                    log.info("epoch %d is the best so far by val_%s: wrote %s", epoch, cfg.best_metric, BEST_FILE)
            rng = self.rng_states()  # all ranks take part
            if self.rank == 0:
                self.save_resume(epoch, rng)
            if self.world > 1:
                torch.distributed.barrier()
        return final if last == cfg.epochs else self.out / f"epoch_{last}.safetensors"


def _flag(name: str, value) -> str:
    shown = " ".join(map(str, value)) if isinstance(value, list) else value
    return f"--{name.replace('_', '-')} {shown}"


def check_same_settings(saved: dict, cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume with settings that change the model, the data or the optimisation: the
    result would be neither the old run nor a new one (or the weights would not even load)."""
    now = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as they were saved
    same_phase = lambda a, b: a is not None and b is not None and abs(a) == abs(b)  # -N and N: one phase
    changed = [
        name
        for name in RESUME_SETTINGS
        if name in saved
        and saved[name] != now[name]
        and not (name == "finetune_last_epochs" and same_phase(saved[name], now[name]))
        and not (name in PATH_SETTINGS and same_places(saved[name], now[name]))
    ]
    if changed:
        differences = ", ".join(f"{_flag(n, now[n])} (was {_flag(n, saved[n]).split(' ', 1)[1]})" for n in changed)
        raise ValueError(
            f"{path} was written with other settings: {differences}; resume with the same options, "
            "use another --out, or add --restart to start over in this folder"
        )


def same_places(saved, now) -> bool:
    """Paths written differently that name the same files from here (`ds`, `./ds/`, `/abs/ds`)."""
    places = lambda value: [os.path.realpath(p) for p in (value if isinstance(value, list) else [value])]
    return saved is not None and now is not None and places(saved) == places(now)


def check_resume_settings(cfg: TrainConfig) -> None:
    """`check_same_settings` before any model is built (a changed --init or --backbone would
    otherwise fail first, in loading); resume.pt is memory-mapped, its weights are not read."""
    path = Path(cfg.out) / RESUME_FILE
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if "config" in state:
            check_same_settings(json.loads(state["config"]), cfg, path)


def check_fresh_folder(out: Path) -> None:
    """A new run never replaces another run's outputs: a folder holding them but no resume.pt
    (deleted, or the run stopped before its first epoch ended) is refused."""
    found = sorted({path.name for pattern in RUN_OUTPUTS for path in out.glob(pattern)})
    if found and not (out / RESUME_FILE).is_file():
        raise ValueError(
            f"{out} holds another run's outputs ({_listing(found)}) but no {RESUME_FILE} to continue from: "
            "use another --out, or add --restart to replace them"
        )


def remove_run_outputs(out: Path) -> None:
    """A fresh run (an empty folder, or --restart) starts from nothing: an earlier run's log, epochs,
    best and final checkpoints and resume.pt would otherwise pass for this run's (a longer run's last
    epochs, a best this run without validation never replaces)."""
    for pattern in (*RUN_OUTPUTS, RESUME_FILE):
        for path in out.glob(pattern):
            path.unlink()


def _listing(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_log(log_file) -> list[dict]:
    """The records of metrics.jsonl. A last line cut short (a crash while it was written, by an
    earlier version that appended in place) is left out rather than making the log unreadable."""
    path = Path(log_file)
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not JSON; delete that line and run again") from None
            log.warning("%s: leaving out its last line, cut short by an interrupted write", path)
    return records


def write_log(log_file, records: list[dict]) -> None:
    """metrics.jsonl replaced in one step (atomically): a crash leaves the old or the new log, never
    a torn line."""
    with atomic_path(log_file) as tmp:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in records))


def best_epoch(log_file, metric: str = "Sm", among=None) -> int | None:
    """The epoch of metrics.jsonl with the best `val_<metric>` (the earliest among equals), or None;
    only epochs in `among` when given (those whose checkpoint was kept)."""
    key, sign = f"val_{metric}", (-1 if metric in LOWER_IS_BETTER else 1)
    best = None
    for record in read_log(log_file):
        if among is not None and record.get("epoch") not in among:
            continue
        if key in record and (best is None or sign * record[key] > sign * best[1]):
            best = (record["epoch"], record[key])
    return None if best is None else best[0]


def summary(record: dict) -> str:
    """'loss 0.4123, lr 7.07e-06, ...': four significant digits, scientific where small."""
    return ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float))


def train(cfg: TrainConfig, resume: bool = True, stop_after_epoch: int | None = None) -> Path | None:
    """Train (resuming from cfg.out's resume.pt unless `resume` is False: --restart); the last
    checkpoint written, or None when the run had already gone past the epochs asked for."""
    if resume:
        check_fresh_folder(Path(cfg.out))
        check_resume_settings(cfg)
    trainer = Trainer(cfg)
    if resume:
        trainer.resume()
    return trainer.run(stop_after_epoch)
