"""Fine-tune or train BiRefNet: the official recipe (AdamW, multi-stage losses, late
fine-tuning phase), mixed precision, gradient accumulation, DistributedDataParallel,
atomic checkpoints and exact resumption.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from birefnet import BiRefNet, build_model, load_model, save_checkpoint
from birefnet.device import resolve_device
from birefnet.errors import OutOfMemory
from birefnet.files import atomic_path
from birefnet.inference import is_out_of_memory

from .config import TrainConfig
from .data import (
    Augment,
    DatasetError,
    SegmentationDataset,
    SizedBatchSampler,
    collate,
    find_backgrounds,
    find_pairs,
    readable,
)
from .losses import birefnet_loss, finetune_phase_length, loss_weights
from .metrics import METRICS, MetricSet
from .run_folder import (
    BEST_FILE,
    LOG_FILE,
    RESUME_FILE,
    best_epoch,
    check_fresh_folder,
    check_resume_settings,
    check_same_data,
    data_listing,
    load_resume_state,
    read_log,
    remove_run_outputs,
    remove_stale_temporaries,
    summary,
    write_log,
)

log = logging.getLogger(__name__)


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


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def _freeze_batchnorm(model: nn.Module) -> None:
    """Use running statistics (batch size 1 has none of its own); affine terms still train."""
    for module in _batchnorms(model):
        module.eval()


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
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} is a file; name a folder for the run (it is created if new)")
        torch.manual_seed(cfg.seed + self.rank)

        pairs = find_pairs(cfg.data)
        val_pairs = find_pairs(cfg.val) if cfg.val else []
        self.data_files = data_listing(pairs + val_pairs)  # kept in resume.pt: a resume checks them
        if cfg.val_split and not val_pairs:
            pairs, val_pairs = split_validation(pairs, cfg.val_split, cfg.seed)
        # checked after the split: a file repaired before a resume leaves the split as it was
        pairs, val_pairs = readable(pairs), readable(val_pairs, "validation")
        augment = Augment(crop=cfg.crop, background_synthesis=cfg.background_synthesis) if cfg.augment else None
        backgrounds = find_backgrounds(cfg.data)
        self.train_set = SegmentationDataset(pairs, augment, cfg.seed, backgrounds)
        self.val_set = (
            SegmentationDataset(val_pairs, None, cfg.seed, find_backgrounds(cfg.val) or backgrounds, substitute=False)
            if val_pairs
            else None
        )
        self.sampler = SizedBatchSampler(
            len(pairs), cfg.batch_size, cfg.size, cfg.dynamic_size, cfg.seed, rank=self.rank, world=self.world
        )
        if len(self.sampler) == 0:
            raise ValueError(f"{len(pairs)} training pairs make no full batch of {cfg.batch_size} per rank")

        model = build_initial_model(cfg)
        self.freeze_bn = self.batchnorm_frozen(model, len(pairs))
        self.out.mkdir(parents=True, exist_ok=True)  # the settings are checked: the run can begin
        if self.rank == 0:
            remove_stale_temporaries(self.out)
        self.model = model.to(self.device)
        if cfg.grad_checkpointing:
            self.model.bb.set_grad_checkpointing(True)
        self.frozen_backbone = cfg.freeze_backbone if cfg.freeze_backbone is not None else self.model.variant.frozen
        if self.frozen_backbone:
            self.model.bb.requires_grad_(False)
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

    def batchnorm_frozen(self, model: nn.Module, pairs: int) -> bool:
        """Whether BatchNorm trains on running statistics. Batches of one image (--batch-size 1, or one
        training pair: a batch is never larger than the data) have no statistics of their own (the pooled
        1x1 branch holds one value per channel), so by default they freeze them; --no-freeze-batchnorm
        there is refused before any work rather than failing in torch at the first step: the user asked
        for statistics one image cannot give, and silently freezing would ignore the flag. A last batch
        of one never comes: training batches leave out the remainder (SizedBatchSampler, drop_last)."""
        one = min(self.cfg.batch_size, pairs) == 1
        if self.cfg.freeze_batchnorm is not None:
            if one and not self.cfg.freeze_batchnorm and _batchnorms(model):
                given = "--batch-size 1" if self.cfg.batch_size == 1 else "1 training pair"
                raise ValueError(
                    f"--no-freeze-batchnorm with batches of one image ({given}): BatchNorm cannot compute "
                    "statistics from one image; leave the flag out (statistics frozen), or train with "
                    "--batch-size 2 or more on 2 or more pairs"
                )
            return self.cfg.freeze_batchnorm
        if self.cfg.batch_size > 1 and pairs == 1 and self.rank == 0:
            log.info("1 training pair: batches of one image, BatchNorm statistics frozen as with --batch-size 1")
        return one

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
            "data": self.data_files,
        }
        with atomic_path(self.out / RESUME_FILE) as tmp:
            torch.save(state, tmp)

    def resume(self) -> bool:
        """Continue from out/resume.pt when it exists; True if it did."""
        path = self.out / RESUME_FILE
        if not path.is_file():
            return False
        state = load_resume_state(path)  # settings checked by train() first
        check_same_data(state.get("data"), self.data_files, path)
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
        """The batches; a data set error raised in a loader process is the same one line as without one
        (torch re-raises it with the worker's whole traceback as its message)."""
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.cfg.workers,
            generator=torch.Generator().manual_seed(0),
        )
        try:
            yield from loader
        except DatasetError as err:
            last = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            raise DatasetError(last.split(f"{DatasetError.__name__}: ", 1)[-1]) from None

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
        self.optimizer.zero_grad(set_to_none=True)
        # closed on any error too: the one-line report then starts a line of its own, not after the bar
        with tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", disable=self.rank != 0, leave=False) as bar:
            for step, (images, masks, labelled, _) in enumerate(self._loader(self.train_set, self.sampler)):
                if step >= steps:
                    break
                images, masks = images.to(self.device), masks.to(self.device)
                labelled = None if labelled is None else labelled.to(self.device)
                with self.out_of_memory_as_one_line(images, epoch, "training"):
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
        self.scheduler.step()
        means = {k: v / steps for k, v in sums.items()}
        if self.world > 1:  # the epoch's figures over all ranks, not rank 0's share
            values = torch.tensor(list(means.values()), dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(values)
            means = dict(zip(means, (values / self.world).tolist()))
        return means

    @contextlib.contextmanager
    def out_of_memory_as_one_line(self, images: torch.Tensor, epoch: int, doing: str):
        """A device out of memory as one line (`birefnet.errors.OutOfMemory`, which run_command reports
        with exit code 1, as `birefnet` does) instead of torch's traceback. resume.pt is left as it is:
        written atomically after each finished epoch, it still holds the last one."""
        try:
            yield
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            b, _, h, w = images.shape
            raise OutOfMemory(
                f"{self.device} ran out of memory {doing} {b} image(s) at {w}x{h} in epoch {epoch}: "
                + self._ways_to_less_memory(epoch)
            ) from err

    def _ways_to_less_memory(self, epoch: int) -> str:
        """The settings that need less memory and this run does not use yet. --grad-checkpointing first:
        it recomputes activations and trains the same, so a resume may add it and continue from resume.pt;
        the others change the optimisation, which a resume refuses (RESUME_SETTINGS): they need --restart."""
        cfg = self.cfg
        smaller = ["a smaller --batch-size (--accumulate keeps the effective batch)"] * (cfg.batch_size > 1)
        smaller.append("a smaller --dynamic-size HI" if cfg.dynamic_size else "a smaller --size")
        if cfg.precision == "fp32":
            smaller.append("--precision " + ("fp16" if self.device.type == "cuda" else "bf16"))
        if not self.frozen_backbone:
            smaller.append("--freeze-backbone")
        settings = " or ".join(filter(None, (", ".join(smaller[:-1]), smaller[-1])))
        resumable = (self.out / RESUME_FILE).is_file()
        if cfg.grad_checkpointing:
            return f"start over (--restart) with {settings}" if resumable else f"run again with {settings}"
        if resumable:
            return (
                f"run again with --grad-checkpointing to continue from {RESUME_FILE} (epoch {epoch - 1}), "
                f"or start over (--restart) with {settings}"
            )
        return f"run again with --grad-checkpointing, {settings}"

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        self.model.eval()
        metrics = MetricSet([name for name in METRICS if name != "HCE"])
        sampler = SizedBatchSampler(
            len(self.val_set), self.cfg.batch_size, self.cfg.size, None, shuffle=False, drop_last=False
        )
        for batch in self._loader(self.val_set, sampler):
            if batch is None:  # every image of it unreadable (reported)
                continue
            images, masks, labelled, _ = batch
            with self.out_of_memory_as_one_line(images, epoch, "validating"):
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
                    record.update({f"val_{k}": v for k, v in self.validate(epoch).items()})
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


def train(cfg: TrainConfig, resume: bool = True, stop_after_epoch: int | None = None) -> Path | None:
    """Train (resuming from cfg.out's resume.pt unless `resume` is False: --restart); the last
    checkpoint written, or None when the run had already gone past the epochs asked for."""
    if stop_after_epoch is not None and stop_after_epoch < 1:
        raise ValueError(f"--stop-after-epoch {stop_after_epoch}: use an epoch of 1 or more")
    if resume:
        check_fresh_folder(Path(cfg.out))
        check_resume_settings(cfg)
    trainer = Trainer(cfg)
    if resume:
        trainer.resume()
    return trainer.run(stop_after_epoch)
