"""BiRefNet: bilateral-reference dichotomous image segmentation, checkpoint-compatible with the
official implementation (ZhengPeng7/BiRefNet), without remote code."""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # OpenMP threads that wait by spinning steal the cores other processes need, and a spinning
    # thread descheduled mid-step stalls the rest: with one busy process beside it, a 2-thread
    # Swin-T pass took 2.3x its idle time when spinning, 1.7x when waiting passively, and the
    # same time idle. Read once, when torch loads its OpenMP runtime; an explicit value wins.
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from .checkpoint_files import model_to_official_keys, read_checkpoint, save_checkpoint, strip_prefixes
from .decoder import DecoderOutput, image_tiles
from .detection import detect_config
from .errors import CheckpointError, OutOfMemory
from .guidance import segment_regions
from .highres import segment_highres
from .hub import download
from .inference import cutout, mask_to_image, segment, to_rgb_tensor, working_size
from .loading import CheckpointInfo, load_model
from .model import BACKBONES, BiRefNet, BiRefNetConfig, build_model
from .version import __version__
from .zoo import KNOWN_CHECKPOINTS, KnownCheckpoint, find_checkpoint

__all__ = [
    "BACKBONES",
    "BiRefNet",
    "BiRefNetConfig",
    "CheckpointError",
    "CheckpointInfo",
    "DecoderOutput",
    "KNOWN_CHECKPOINTS",
    "KnownCheckpoint",
    "OutOfMemory",
    "build_model",
    "cutout",
    "detect_config",
    "download",
    "find_checkpoint",
    "image_tiles",
    "load_model",
    "mask_to_image",
    "model_to_official_keys",
    "read_checkpoint",
    "save_checkpoint",
    "segment",
    "segment_highres",
    "segment_regions",
    "strip_prefixes",
    "to_rgb_tensor",
    "working_size",
    "__version__",
]
