"""CUDA graphs for inference: the forward at one input shape and dtype captured once, then replayed.

At a fixed working size the model is a static graph, and at batch 1 on a fast GPU its time goes to
launching about a thousand small kernels rather than to running them. A CUDA graph records those
launches once (after a warm-up on a side stream, which also lets cuDNN and cuBLAS pick their
algorithms) and replays them with one call, reading from a static input buffer and writing to a
static output buffer. Each model keeps a small least-recently-used set of graphs, one per
(input shape, input dtype, device, deformable-convolution choice), all in one memory pool (their
scratch memory is shared: they never run at once); a batch smaller than a captured one (the last
chunk of a clip) is padded into it instead of capturing again. A shape is captured the second time
it comes (`CAPTURE_AT`): a size seen once (an aspect-ratio working size for one photo) never pays
the capture, which costs about 15 s the first time on a machine (Triton compiling the deformable
convolution; its disk cache keeps the kernels) and a few seconds after. A forward that
synchronises with the host cannot be captured, and a capture that fails half-way can leave
PyTorch's allocator holding memory for the rest of the process: the second warm-up run checks
for synchronisation first (`torch.cuda.set_sync_debug_mode("error")`, process-wide for that one
forward: the server and ComfyUI run their models on one thread), and only a forward that passes
is captured. Any failure runs that shape eager from then on, said in one warning line.
A graph keeps its memory between calls; `release(model)` frees it (the ComfyUI nodes do after
each run, since ComfyUI's memory manager cannot see it).

torchvision's deformable convolution cannot be captured: its CUDA kernel is launched on the legacy
default stream, not the current one, so a capture on another stream runs it once instead of
recording it, and a replay's output belongs to the capture's input (measured on an H200: 3.8e-2
relative error against eager). A graph therefore holds the fused Triton kernel
(`deform_conv_triton`; the banded form where Triton is missing), or, with torchvision's kernel
chosen (BIREFNET_DEFORM_CONV=torchvision), the capture is cut at each deformable convolution
("between": a forward of 20 is 21 graphs) and torchvision's kernel runs eager between the
pieces at each replay, on the default stream it launches on; no Triton compile (most of the first
call's 15 s), torchvision's speed (2.7x the fused kernel's in fp16 on an H200), a few dozen
launches more per forward. Not yet measured on a GPU: the default stays Triton's until it is.

On by default on NVIDIA GPUs (Swin-L 1024² fp16 on an H200: 0.62x eager's time, within fp16
rounding of it; docs/benchmarks.md); on AMD GPUs (ROCm), not measured, BIREFNET_CUDA_GRAPHS=1
turns them on. BIREFNET_CUDA_GRAPHS=0 turns them off for every model, `enable(model, False)` for
one. They apply only on CUDA, in inference; everything else runs eager.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable
from weakref import WeakKeyDictionary

import torch
from torch import nn

from . import device_constants
from .deform_conv import chosen_implementation, implementation, outside_capture, triton_kernels

ENV = "BIREFNET_CUDA_GRAPHS"
MAX_GRAPHS = 4  # per model; they share one memory pool, about the largest forward's activation memory
CAPTURE_AT = 2  # the call of a shape that captures it; the calls before run eager
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")

log = logging.getLogger("birefnet")
_OVERRIDES: WeakKeyDictionary[nn.Module, bool] = WeakKeyDictionary()
_CACHES: WeakKeyDictionary[nn.Module, GraphCache] = WeakKeyDictionary()


def parse_switch(text: str | None, default: bool = True) -> bool:
    """The switch's value: 1/true/yes/on or 0/false/no/off, `default` when unset; anything else is a
    one-line error."""
    if text is None or not text.strip():
        return default
    value = text.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(f"{ENV}={text!r}: use 1 to turn CUDA graphs on or 0 to turn them off")


def enable(model: nn.Module, on: bool | None = True) -> None:
    """Turn CUDA graphs on or off for `model` whatever the environment says; None follows it again.
    Turning them off frees the captured graphs."""
    if on is None:
        _OVERRIDES.pop(model, None)
    else:
        _OVERRIDES[model] = bool(on)
    if not on and model in _CACHES:
        _CACHES.pop(model).clear()


def enabled(model: nn.Module, device: torch.device) -> bool:
    """Whether `model`'s forward on `device` runs through CUDA graphs: on NVIDIA GPUs unless switched
    off; on AMD's (ROCm, also "cuda" to PyTorch, not measured) only when switched on."""
    if device.type != "cuda":
        return False
    on = _OVERRIDES.get(model)
    if on is not None:
        return on
    return parse_switch(os.environ.get(ENV), default=torch.version.hip is None)


def release(model: nn.Module) -> None:
    """Free `model`'s captured graphs and their memory; the next calls capture again when due."""
    cache = _CACHES.pop(model, None)
    if cache is not None:
        cache.clear()


@contextmanager
def synchronisation_raises():
    """Inside, an operation that makes the host wait for the GPU raises instead (what capture refuses)."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def capture_safe_implementation() -> str:
    """The deformable convolution of a graph: the chosen one if it can be captured (triton, banded);
    "between" (torchvision's kernel eager between graph pieces) when torchvision's is chosen; else
    Triton's kernel where Triton imports, else the banded form."""
    choice = chosen_implementation()
    if choice in ("triton", "banded"):
        return choice
    if choice == "torchvision":
        return "between"
    return "banded" if triton_kernels() is None else "triton"


def cache_for(model: nn.Module) -> GraphCache:
    """The model's graph cache (created on first use; it lives as long as the model)."""
    cache = _CACHES.get(model)
    if cache is None:
        cache = _CACHES[model] = GraphCache(model)
    return cache


def on_default_stream(run: Callable[[], object]):
    """`run()` on the default stream, in order with the current one both ways: torchvision's deformable
    convolution launches its kernel there whatever the current stream (the warm-ups run on a side stream).
    The strict alternation also makes the memory safe: each stream's later work waits for the other's
    reads."""
    caller, default = torch.cuda.current_stream(), torch.cuda.default_stream()
    if caller == default:
        return run()
    default.wait_stream(caller)
    with torch.cuda.stream(default):
        out = run()
    caller.wait_stream(default)
    return out


class _Pieces:
    """A forward captured as one CUDA graph, or, cut at each call handed to `cut`, as several graphs
    with those calls run eager between them; `replay()` runs it all in capture order."""

    def __init__(self, pool, stream: torch.cuda.Stream):
        self.pool = pool
        self.stream = stream
        self.steps: list[Callable[[], object]] = []  # graph replays and the eager calls between them
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self._capturing = None  # the open `torch.cuda.graph` context

    def capture(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # The outer stream context puts the caller's stream back even where a failed capture's own exit
        # cannot (its capture_end raises first): left on the capture stream, the thread's later eager
        # work would race torchvision's kernel, which launches on the default stream.
        with torch.cuda.stream(self.stream):
            self._begin()
            try:
                out = forward(x)
            except BaseException:
                self._abandon()
                raise
            self._end()
        return out

    def cut(self, run: Callable[[], torch.Tensor], shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """End the current graph, replay `run()` eager into a buffer of the graphs' pool, start the next graph."""
        out = torch.empty(shape, dtype=dtype, device=torch.cuda.current_device())  # in the pool: fixed address
        self._end()
        self.steps.append(lambda: out.copy_(run()))
        self._begin()
        return out

    def replay(self) -> None:
        if len(self.steps) == 1:
            self.steps[0]()
        else:  # with torchvision's kernel between the graphs, all on the stream it launches on
            on_default_stream(self._replay_steps)

    def _replay_steps(self) -> None:
        for step in self.steps:
            step()

    def _begin(self) -> None:
        graph = torch.cuda.CUDAGraph()
        context = torch.cuda.graph(graph, pool=self.pool, stream=self.stream)
        context.__enter__()
        self._capturing = context
        self.graphs.append(graph)

    def _end(self) -> None:
        context, self._capturing = self._capturing, None
        context.__exit__(None, None, None)
        self.steps.append(self.graphs[-1].replay)

    def _abandon(self) -> None:
        """Close a capture that failed half-way (its own error, if any, gives way to the first one)."""
        context, self._capturing = self._capturing, None
        if context is not None:
            try:
                context.__exit__(None, None, None)
            except Exception:
                pass


@dataclass
class _Graph:
    pieces: _Pieces
    static_input: torch.Tensor
    static_output: torch.Tensor
    constants: tuple = ()  # the device constants it read at capture (kept alive: it holds their addresses)


class GraphCache:
    """Captured graphs of one model's forward, least recently used first out.

    `run(forward, x)` runs x's shape eager until its `capture_at`-th call, which captures it; later
    calls replay the graph and return a fresh copy of the output (the static buffer is overwritten by
    the next replay).
    Graphs hold raw pointers to the weights, so they are all dropped when the weights move
    (`model.to(...)`, `half()`); in-place loads (`load_state_dict`) keep them valid.
    """

    def __init__(
        self, model: nn.Module, max_graphs: int = MAX_GRAPHS, capture_at: int = CAPTURE_AT, deform: str | None = None
    ):
        self.model = model
        self.max_graphs = max_graphs
        self.capture_at = capture_at
        self.deform = deform  # triton, banded or between; None: `capture_safe_implementation()` at each call
        self.graphs: OrderedDict[tuple, _Graph | None] = OrderedDict()  # None: capture failed, run eager
        self.sightings: OrderedDict[tuple, int] = OrderedDict()  # calls of shapes not captured yet
        self.captures = 0  # graphs captured so far (tests and the benchmark read it)
        self._weights = self._weight_pointers()
        self._lock = threading.Lock()
        self._pools: dict[torch.device, tuple] = {}  # one memory pool per device, shared by its graphs

    def _weight_pointers(self) -> tuple[int, ...]:
        return tuple(t.data_ptr() for t in (*self.model.parameters(), *self.model.buffers()))

    def clear(self) -> None:
        self.graphs.clear()
        self.sightings.clear()
        self._pools.clear()  # the next capture starts a fresh pool

    def due(self, key: tuple) -> bool:
        """Count one call of an uncaptured shape; True when this call should capture it."""
        count = self.sightings.pop(key, 0) + 1
        if count >= self.capture_at:
            return True
        self.sightings[key] = count
        while len(self.sightings) > 4 * self.max_graphs:  # a stream of one-off sizes stays bounded
            self.sightings.popitem(last=False)
        return False

    def run(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA tensor, got one on {x.device}")
        with self._lock:
            weights = self._weight_pointers()
            if weights != self._weights:
                self.clear()
                self._weights = weights
            deform = self.deform or capture_safe_implementation()
            key, entry = self._find(x, deform)
            if key not in self.graphs:
                if not self.due(key):
                    return forward(x)
                entry = self._capture(forward, x, key)
            self.graphs.move_to_end(key)
            if entry is None:
                return forward(x)
            batch = x.shape[0]
            entry.static_input[:batch].copy_(x)
            entry.pieces.replay()
            return entry.static_output[:batch].clone()

    def _find(self, x: torch.Tensor, deform: str) -> tuple[tuple, _Graph | None]:
        """The exact graph for x, else the smallest captured one it pads into, else x's own key (not cached).
        The deformable-convolution choice is part of the key: a graph replays the kernels it captured."""
        key = (tuple(x.shape), x.dtype, x.device, deform)
        if key in self.graphs:
            return key, self.graphs[key]
        larger = [
            k
            for k, entry in self.graphs.items()
            if entry is not None and k[1:] == key[1:] and k[0][1:] == key[0][1:] and k[0][0] > key[0][0]
        ]
        if larger:
            best = min(larger, key=lambda k: k[0][0])
            return best, self.graphs[best]
        return key, None

    def _capture(self, forward, x: torch.Tensor, key: tuple) -> _Graph | None:
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        started = time.perf_counter()
        deform = key[-1]
        between = deform == "between"  # keeps the chosen (eager) implementation; the others are what graphs run
        form = nullcontext() if between else implementation(deform)
        try:
            with torch.cuda.device(x.device), form:
                static_input = x.clone()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                eager_between = (lambda run, shape, dtype: on_default_stream(run)) if between else None
                with torch.cuda.stream(side), outside_capture(eager_between):
                    forward(static_input)  # makes the constants, compiles Triton's kernel, picks cuDNN's plans
                    with synchronisation_raises():
                        forward(static_input)  # found here, a synchronising forward is never captured
                torch.cuda.current_stream().wait_stream(side)
                torch.cuda.empty_cache()  # eager's cached blocks back: the graph's own pool can take them
                # Graphs of one model never run at once (the lock), and each keeps its output alive,
                # so a later capture may reuse only other graphs' scratch memory: one pool for all.
                if x.device not in self._pools:
                    self._pools[x.device] = torch.cuda.graph_pool_handle()
                pieces = _Pieces(self._pools[x.device], side)
                with outside_capture(pieces.cut if between else None):
                    static_output = pieces.capture(forward, static_input)
            entry = _Graph(pieces, static_input, static_output, device_constants.alive())
            self.captures += 1
            # The first-call cost users see (warm-up runs, cuDNN/Triton tuning, capture), said once per shape.
            log.info("CUDA graph for input %s %s captured in %.1f s", key[0], key[1], time.perf_counter() - started)
        except Exception as err:  # any failure: eager for this shape from now on, said once
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            log.warning("CUDA graph not captured for input %s %s (%s); running eager", key[0], key[1], reason)
            entry = None
        self.graphs[key] = entry
        return entry


def run(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`forward(x)` through `model`'s graph cache (x on CUDA)."""
    return cache_for(model).run(forward, x)
