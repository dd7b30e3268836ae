"""A run folder: what a run writes there (checkpoints, resume.pt, metrics.jsonl), the checks that
keep one run from passing for another (resuming with other settings, a folder holding another run's
outputs) and the metrics log, replaced atomically and read back with a torn last line left out."""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from dataclasses import asdict
from pathlib import Path

import torch

from birefnet.files import atomic_path, remove_killed_writes

from .config import LOWER_IS_BETTER, TrainConfig

log = logging.getLogger(__name__)
RESUME_FILE = "resume.pt"
BEST_FILE = "best.safetensors"
LOG_FILE = "metrics.jsonl"
# Settings a resumed run must share with the run that wrote resume.pt: they decide the model, the
# data and the optimisation. The others (--epochs to extend a run, --device, --workers, --save-every,
# --best-metric, ...) may change between starts.
PATH_SETTINGS = ("data", "init", "val", "backbone_weights")  # compared as the places they name
SCRATCH_SETTINGS = ("backbone", "backbone_weights")  # decide only a --init scratch model (a checkpoint has its own)
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


def remove_stale_temporaries(folder: Path) -> None:
    """A run killed while writing leaves the temporary files of its atomic writes; a new start
    clears them (`birefnet.files.remove_killed_writes`): nothing else in the run folder is touched."""
    for stale in remove_killed_writes([folder], before=time.time()):
        log.info("removed %s, left by an interrupted write", stale.name)


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
        and not (name in SCRATCH_SETTINGS and now["init"] != "scratch")
    ]
    if changed:
        differences = ", ".join(f"{_flag(n, now[n])} (was {_flag(n, saved[n]).split(' ', 1)[1]})" for n in changed)
        raise ValueError(
            f"{path} was written with other settings: {differences}; resume with the same options, "
            "use another --out, or add --restart to start over in this folder"
        )


def data_listing(samples) -> list[str]:
    """The files a run learns and validates from, by their names inside their dataset folders
    ("im/a.jpg gt/a.png"): the same data under another path (`ds`, `./ds/`) lists the same."""
    named = lambda path: f"{path.absolute().parent.name}/{path.name}"
    return [f"{named(sample.image)} {named(sample.mask)}" for sample in samples]


def check_same_data(saved: list[str] | None, now: list[str], path: Path) -> None:
    """Refuse to resume on files other than the run's: the same --data folder with pairs added or
    removed since resume.pt was written would continue neither run (other batches, and --val-split
    would draw another validation set, some of it trained on already). Files of earlier versions
    (no listing) are not checked."""
    if saved is None or saved == now:
        return
    before, after = set(saved), set(now)
    added, gone = [pair for pair in now if pair not in before], [pair for pair in saved if pair not in after]
    example = f", e.g. {'added' if added else 'gone'}: {(added or gone)[0].split(' ')[0]}" if added or gone else ""
    raise ValueError(
        f"the data has changed since {path} was written ({len(added)} pair(s) added, {len(gone)} gone{example}): "
        "resume with the files as they were, or add --restart to start over on the data as it is"
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
        state = load_resume_state(path, mmap=True)
        if "config" in state:
            check_same_settings(json.loads(state["config"]), cfg, path)


def load_resume_state(path: Path, mmap: bool = False) -> dict:
    """resume.pt's contents; a file torch cannot read (cut short by a full disk or a kill of an older
    version, copied in part) is one line saying how to go on, not torch's traceback. Torch's own
    reason is left out: it varies with the damage and guesses wrong (a cut file "was not saved with
    the zip format" when memory-mapped)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError):
        raise ValueError(
            f"{path} is damaged (torch cannot read it): add --restart to start over in this folder, "
            "or use another --out"
        ) from None


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
