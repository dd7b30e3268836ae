"""One switch between the inference shortcuts and the plain graph.

Inference runs exact shortcuts of the official computation: BatchNorm folded into the
convolution before it, 1x1 convolutions as matrix products, the ASPP projection summed
branch by branch, fused oneDNN linear layers, deformable convolution by bands. They are
eager-mode tricks (in-place ops, per-image loops, CPU-only kernels) that autograd, tracing
and exporters should not see. The plain graph is the official module graph built from
standard ops and `torchvision.ops.deform_conv2d`: training always runs it, and
`with plain_graph():` asks for it in eval mode too (ONNX/OpenVINO export, equivalence tests).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

_PLAIN = ContextVar("birefnet_plain_graph", default=False)


@contextmanager
def plain_graph(enabled: bool = True):
    """Run the model's plain graph (standard ops, torchvision's deformable convolution) inside."""
    token = _PLAIN.set(enabled)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def plain_graph_requested() -> bool:
    return _PLAIN.get()


def shortcuts(module: nn.Module | None = None) -> bool:
    """Whether the inference shortcuts apply here: eval mode, no autograd, plain graph not asked for.

    The single decision point: every dual-path block asks this and nothing else.
    """
    if _PLAIN.get() or torch.is_grad_enabled():
        return False
    return module is None or not module.training
