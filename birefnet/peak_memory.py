"""Peak GPU memory of one forward pass, for any size and dtype, estimated on any machine.

    python -m birefnet.peak_memory --variant swin_v1_l --resolution 1024 2048 4096 --dtype fp16
    python -m birefnet.peak_memory --resolution 4096 --official ../BiRefNet

The model runs on fake tensors (torch's FakeTensorMode: shapes, dtypes and devices, no data)
that claim to be on CUDA, so the code takes the branches it takes on a GPU, and every tensor's
storage counts from its creation until it is freed. torchvision's deformable-convolution
kernel allocates its im2col buffer and two output-sized buffers in C++, out of sight: their
sizes are added during that call. Not counted: the CUDA context, cuBLAS/cuDNN workspaces and
the caching allocator's rounding, so a card needs a few hundred MB more than the figure (the GPU
check in docs/benchmarks.md compares it with a GPU's own count; on an H100 the estimate was 1-4%
under). Swin-L at 4096² takes a few seconds on two CPU cores and no memory beyond the weights.
"""

from __future__ import annotations

import argparse
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .deform_conv import torchvision_buffer_bytes
from .device import parse_dtype


@dataclass(frozen=True)
class PeakMemory:
    """Bytes of one forward: `weights` (parameters and buffers), `peak` (weights, input and every
    live tensor at the worst moment), and the module running at that moment."""

    weights: int
    peak: int
    where: str


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of every storage an op creates, until the storage is freed."""

    def __init__(self, existing: list[torch.Tensor]):
        """`existing`: tensors alive before the forward (weights, input); views of them cost nothing."""
        super().__init__()
        self._sizes = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in existing}
        self._refs: dict[int, weakref.ref] = {}
        self.now = self.peak = sum(self._sizes.values())
        self.where = ""
        self.modules: list[str] = []

    def _free(self, key: int) -> None:
        self.now -= self._sizes.pop(key, 0)
        self._refs.pop(key, None)

    def _see(self, extra: int = 0) -> None:
        if self.now + extra > self.peak:
            self.peak = self.now + extra
            self.where = self.modules[-1] if self.modules else "(model)"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self._sizes:
                    self._sizes[key] = storage.nbytes()
                    self.now += self._sizes[key]
                    self._refs[key] = weakref.ref(storage, lambda _, key=key: self._free(key))
        if func.name() == "torchvision::deform_conv2d" and out.device.type != "cpu":
            x, weight = args[0], args[1]
            self._see(torchvision_buffer_bytes(x, weight, *out.shape[-2:]) + 2 * out.nbytes)
        self._see()
        return out


def _fake_state(model: torch.nn.Module, mode, device, dtype) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers as fake tensors on `device`, floats in `dtype`."""
    state = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        fake = mode.from_tensor(tensor.detach())
        state[name] = fake.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    return state


def estimate_peak(
    model: torch.nn.Module, size: tuple[int, int], dtype=torch.float16, batch: int = 1, device: str = "cuda"
) -> PeakMemory:
    """Peak memory of `model(x)` for x (batch, 3, *size) in `dtype` on `device`, in inference mode.

    The model itself is left untouched (its weights are read for their shapes only).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    dtype = parse_dtype(dtype)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        state = _fake_state(model, mode, torch.device(device), dtype)
        x = torch.zeros(batch, 3, *size, device=device, dtype=dtype)
    weights = sum(t.nbytes for t in state.values())
    tracker = _LiveBytes([*state.values(), x])
    names = {module: name or "(model)" for name, module in model.named_modules()}

    def entered(module, args):
        tracker.modules.append(names.get(module, type(module).__name__))

    def left(module, args, out):
        tracker.modules.pop()

    enter = torch.nn.modules.module.register_module_forward_pre_hook(entered)
    leave = torch.nn.modules.module.register_module_forward_hook(left)
    try:
        with mode, tracker, torch.inference_mode():
            torch.func.functional_call(model, state, (x,))
    finally:
        enter.remove()
        leave.remove()
    return PeakMemory(weights=weights, peak=tracker.peak, where=tracker.where)


def main(argv=None) -> int:
    from .bench import official_model
    from .checkpoint_files import model_to_official_keys
    from .inference import parse_size
    from .model import build_model

    parser = argparse.ArgumentParser(prog="python -m birefnet.peak_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="swin_v1_l", help="backbone of the model (default swin_v1_l)")
    parser.add_argument("--resolution", nargs="+", default=["1024", "2048", "4096"], help="sizes: 1024 or WxH")
    parser.add_argument("--dtype", default="fp16", help="fp16, bf16 or fp32 (default fp16)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--official", help="a checkout of ZhengPeng7/BiRefNet: its model in the same table")
    args = parser.parse_args(argv)
    try:
        sizes = [parse_size(text) for text in args.resolution]
        dtype = parse_dtype(args.dtype)
    except ValueError as err:
        parser.error(str(err))
    models = {"this library": build_model(args.variant).eval()}
    if args.official:
        official = official_model(args.official, args.variant).eval()
        official.load_state_dict(model_to_official_keys(models["this library"].state_dict(), args.variant))
        models["official"] = official
    print(f"Estimated peak memory on CUDA, {args.variant}, {args.dtype}, batch {args.batch} (fake tensors)\n")
    print("| model | size | weights GB | peak GB | peak at |")
    print("|---|---|---|---|---|")
    for height, width in sizes:
        for label, model in models.items():
            result = estimate_peak(model, (height, width), dtype, args.batch)
            weights, peak = f"{result.weights / 1e9:.2f}", f"{result.peak / 1e9:.2f}"
            print(f"| {label} | {width}x{height} | {weights} | {peak} | {result.where} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
