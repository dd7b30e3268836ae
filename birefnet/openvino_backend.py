"""BiRefNet on OpenVINO's CPU runtime, called like the PyTorch model.

On CPUs OpenVINO runs the official graph faster than PyTorch's eager kernels (its own fused
convolutions, attention and deformable convolution), and keeps its speed better when other
processes share the cores. `OpenVINOModel(model)` wraps a loaded BiRefNet: `model(x)` on an
ImageNet-normalised (B, 3, H, W) batch returns the same final logits, so `segment`,
`segment_highres`, the CLI and the nodes take it unchanged.

Converting the graph takes minutes for the large backbones, once per working size: the
converted IR is cached on disk under a key of the weights' content, the tile layout and the
size (and OpenVINO compiles from its own blob cache next to it), so later loads take seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .distributed import rank_and_world
from .export import metadata, save_openvino, to_openvino
from .extras import import_openvino, openvino_core
from .files import cache_folder
from .pass_clock import report_within_pass
from .stopping import check_within_op
from .version import __version__

log = logging.getLogger("birefnet")

PRECISIONS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}
WATCH_SECONDS = 0.1  # how often a running pass is checked for Cancel and reports progress


def cache_dir() -> Path:
    """$BIREFNET_CACHE/openvino, else the user cache folder (~/.cache/birefnet/openvino)."""
    return cache_folder("openvino")


def weights_key(model: nn.Module) -> str:
    """A digest of everything the converted graph depends on: weights, layout, versions."""
    openvino = import_openvino()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{__version__}|{openvino.__version__}|{model.config}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().reshape(-1).contiguous().numpy().view(np.uint8))
    return digest.hexdigest()


class OpenVINOModel(nn.Module):
    """A BiRefNet compiled by OpenVINO for the CPU; `model(x)` -> logits, like `BiRefNet`.

    precision: torch.float32 (within float rounding of PyTorch), torch.bfloat16 or
    torch.float16 where the CPU supports them. The PyTorch model stays in memory (fp32) to
    convert new working sizes.
    """

    outside_torch_devices = True  # compiled for the CPU by OpenVINO: device moves and memory managers skip it

    def __init__(
        self,
        model: nn.Module,
        precision: torch.dtype = torch.float32,
        cache: str | os.PathLike | None = None,
        threads: int | None = None,
    ):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision {precision}: use fp32, bf16 or fp16")
        self.core = openvino_core()
        hint = PRECISIONS[precision]
        capabilities = self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if hint in _CAPABILITY and _CAPABILITY[hint] not in capabilities:
            usable = ["fp32"] + [name for name, cap in (("bf16", "BF16"), ("fp16", "FP16")) if cap in capabilities]
            raise ValueError(f"this CPU has no {_CAPABILITY[hint]} support in OpenVINO; use {' or '.join(usable)}")
        self.__dict__["torch_model"] = model.float().cpu().eval()  # not a submodule: .to()/.parameters() leave it alone
        # segment()/predict() read the device and input dtype from the first parameter.
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self.info = model.info
        self.config = model.config
        self.precision = precision
        self.cache = Path(cache) if cache is not None else cache_dir()
        self.options = {"INFERENCE_PRECISION_HINT": hint}
        if threads is None and rank_and_world()[1] > 1:  # torchrun's processes share the cores as torch's threads
            threads = torch.get_num_threads()  # (OpenVINO ignores OMP_NUM_THREADS: each took every core)
        if threads:
            self.options["INFERENCE_NUM_THREADS"] = int(threads)
        self.key = weights_key(model)
        self._compiled: dict[tuple[int, int], object] = {}
        self._requests: dict[tuple[int, int], object] = {}  # an inference request per working size
        self._seconds: dict[tuple[int, ...], float] = {}  # the last pass's time per input shape (progress)
        # False (a server, which must answer in seconds): a working size with no converted graph in the cache
        # runs in the kept PyTorch model instead of converting (minutes for the large backbones)
        self.converts_new_sizes = True
        self._in_pytorch: set[tuple[int, int]] = set()  # sizes said to run in PyTorch (said once each)
        self.eval()

    def ir_path(self, size: tuple[int, int]) -> Path:
        height, width = size
        return self.cache / f"{self.config.backbone}-{self.key}-{width}x{height}.xml"

    def _compile(self, size: tuple[int, int]):
        path = self.ir_path(size)
        if not path.exists():
            self._convert(size, path)
        options = {**self.options, "CACHE_DIR": str(self.cache / "compiled")}  # this model's cache, not the Core's
        compiled = self.core.compile_model(str(path), "CPU", options)
        self._compiled[size] = compiled
        return compiled

    def _convert(self, size: tuple[int, int], path: Path) -> None:
        """Convert into the cache, one process at a time: the processes of a torchrun job start
        together, and each conversion holds gigabytes (12 GB for Swin-L), so the others wait for
        the first one's file instead of converting too.

        The lock is the operating system's (flock): a process that dies converting (out of memory)
        lets the next one in at once. Its empty file stays, as filelock leaves it on purpose (removing
        it could let two processes hold locks on two files of one name), but in `.locks/`, out of the
        way of the IR files."""
        from filelock import FileLock, Timeout

        lock = FileLock(self.cache / ".locks" / path.with_suffix(".lock").name)
        try:
            (self.cache / ".locks").mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(blocking=False)
            except Timeout:  # an OSError too: caught first
                log.warning("OpenVINO: waiting for another process converting into %s", self.cache)
                lock.acquire()
        except OSError as err:
            reason = err.strerror or str(err)
            raise ValueError(
                f"the OpenVINO cache {self.cache} cannot be written ({reason}); set BIREFNET_CACHE to a writable folder"
            ) from None
        try:
            if path.exists():  # the process this one waited for converted it
                return
            height, width = size
            log.warning(
                "OpenVINO: converting %s for %dx%d, once for this working size (minutes for large "
                "backbones; cached in %s)",
                self.config.backbone,
                width,
                height,
                self.cache,
            )
            start = time.perf_counter()
            save_openvino(to_openvino(self.torch_model, size), path, metadata(self.torch_model, size, torch.float32))
            log.warning("OpenVINO: converted in %.0f s", time.perf_counter() - start)
        finally:
            lock.release()

    def prepare(self, size: tuple[int, int]) -> "OpenVINOModel":
        """Convert (or load from the cache) and compile for (height, width) now rather than at the first call."""
        if tuple(size) not in self._compiled:
            self._compile(tuple(size))
        return self

    def pass_modules(self):
        """The modules a pass may run (`pass_hooks`): this one's, and the kept PyTorch model's (sizes not converted
        run there when `converts_new_sizes` is off)."""
        yield from self.modules()
        yield from self.torch_model.modules()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits, by an inference request that is watched while it runs: Cancel (`stopping.checks_inside`)
        stops it within `WATCH_SECONDS`, and progress (`pass_clock.pass_shares`) is its time over the last pass
        of this shape (a pass of seconds to minutes is one OpenVINO operation, with no submodules to check)."""
        self.torch_model._check_input(x)
        size = tuple(x.shape[-2:])
        if size not in self._compiled and not self.converts_new_sizes and not self.ir_path(size).exists():
            if size not in self._in_pytorch:
                self._in_pytorch.add(size)
                log.warning(
                    "OpenVINO: no converted graph for %dx%d (converting takes minutes); PyTorch runs it", *size[::-1]
                )
            return self.torch_model(x.float())
        compiled = self._compiled.get(size) or self._compile(size)
        if size not in self._requests:
            self._requests[size] = compiled.create_infer_request()
        request = self._requests[size]
        last = self._seconds.get(tuple(x.shape))
        started = time.perf_counter()
        request.start_async({0: x.detach().float().cpu().numpy()})
        while not request.wait_for(round(WATCH_SECONDS * 1000)):
            try:
                check_within_op()
            except BaseException:
                request.cancel()
                with contextlib.suppress(RuntimeError):  # a cancelled request's wait says so
                    request.wait()
                raise
            if last:
                report_within_pass(min((time.perf_counter() - started) / last, 0.99))
        self._seconds[tuple(x.shape)] = time.perf_counter() - started
        return torch.from_numpy(np.array(request.get_output_tensor(0).data))  # a copy: the request reuses its own

    def forward_details(self, x: torch.Tensor):
        """Side outputs need the PyTorch graph (the gradient preview): run the kept PyTorch model."""
        return self.torch_model.forward_details(x)
