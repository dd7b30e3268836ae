"""Start a BiRefNet from ImageNet backbone weights (timm or the original Swin/PVT releases)."""
from __future__ import annotations

import re

import torch

from birefnet import BiRefNet
from birefnet.pvt import official_to_timm_key

# timm names of the backbones the released BiRefNet models were initialised from (spec §4).
TIMM_NAMES = {
    "swin_v1_t": "swin_tiny_patch4_window7_224.ms_in22k_ft_in1k",
    "swin_v1_s": "swin_small_patch4_window7_224.ms_in22k_ft_in1k",
    "swin_v1_b": "swin_base_patch4_window12_384.ms_in22k_ft_in1k",
    "swin_v1_l": "swin_large_patch4_window12_384.ms_in22k_ft_in1k",
    "pvt_v2_b0": "pvt_v2_b0.in1k",
    "pvt_v2_b1": "pvt_v2_b1.in1k",
    "pvt_v2_b2": "pvt_v2_b2.in1k",
    "pvt_v2_b5": "pvt_v2_b5.in1k",
}


def convert_backbone_state_dict(state_dict: dict, backbone: str) -> dict[str, torch.Tensor]:
    """ImageNet backbone weights (timm or original layout) -> `model.bb` keys."""
    state_dict = {k: v for k, v in state_dict.items()
                  if not k.startswith(("head", "norm.", "fc_norm")) and not k.endswith(("relative_position_index", "attn_mask"))}
    if backbone.startswith("pvt"):
        if "patch_embed1.proj.weight" in state_dict:  # original PVT release
            state_dict = {official_to_timm_key(k): v for k, v in state_dict.items()}
        else:
            state_dict = {f"body.{k}": v for k, v in state_dict.items()}
        return state_dict
    if "layers.0.downsample.reduction.weight" in state_dict:  # original Swin: merge at the stage end, like ours
        return state_dict
    # timm merges at the start of the next stage
    return {re.sub(r"^layers\.(\d)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k): v
            for k, v in state_dict.items()}


def load_backbone_weights(model: BiRefNet, source) -> None:
    """Fill `model.bb` from a file (any layout above) or, for source == "timm", from timm's
    pretrained weights (downloaded by timm: an explicit user choice)."""
    backbone = model.config.backbone
    if source == "timm":
        import timm

        state_dict = timm.create_model(TIMM_NAMES[backbone], pretrained=True).state_dict()
    else:
        from birefnet import read_checkpoint

        state_dict = read_checkpoint(source)[0]
    converted = convert_backbone_state_dict(state_dict, backbone)
    own = model.bb.state_dict()
    optional = re.compile(r"norm\d\.(weight|bias)|.*relative_position_index")  # BiRefNet's own additions
    missing = [k for k in own if k not in converted and not optional.fullmatch(k)]
    unexpected = [k for k in converted if k not in own]
    reshaped = [k for k in converted if k in own and converted[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        raise ValueError(
            f"{source}: not {backbone} backbone weights ({len(missing)} missing, e.g. {missing[:1]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:1]}; {len(reshaped)} of another shape, e.g. {reshaped[:1]})"
        )
    model.bb.load_state_dict(converted, strict=False)
