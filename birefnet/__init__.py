"""BiRefNet: bilateral-reference dichotomous image segmentation, checkpoint-compatible with the
official implementation (ZhengPeng7/BiRefNet), without remote code."""
from .decoder import DecoderOutput, image_tiles
from .highres import segment_highres
from .hub import download
from .inference import cutout, mask_to_image, segment, to_rgb_tensor, working_size
from .loading import (
    CheckpointError,
    CheckpointInfo,
    detect_config,
    load_model,
    model_to_official_keys,
    read_checkpoint,
    save_checkpoint,
    strip_prefixes,
)
from .model import BACKBONES, BiRefNet, BiRefNetConfig, build_model
from .zoo import KNOWN_CHECKPOINTS, KnownCheckpoint, find_checkpoint

__version__ = "0.1.0"

__all__ = [
    "BACKBONES", "BiRefNet", "BiRefNetConfig", "CheckpointError", "CheckpointInfo", "DecoderOutput",
    "KNOWN_CHECKPOINTS", "KnownCheckpoint", "build_model", "cutout", "detect_config", "download", "find_checkpoint",
    "image_tiles", "load_model", "mask_to_image", "model_to_official_keys", "read_checkpoint",
    "save_checkpoint", "segment", "segment_highres", "strip_prefixes", "to_rgb_tensor", "working_size",
]
