"""CUDA graphs for inference: the forward at one input shape and dtype captured once, then replayed.

At a fixed working size the model is a static graph, and at batch 1 on a fast GPU its time goes to
launching about a thousand small kernels rather than to running them. A CUDA graph records those
launches once (after a warm-up on a side stream, which also lets cuDNN and cuBLAS pick their
algorithms) and replays them with one call, reading from a static input buffer and writing to a
static output buffer. Each model keeps a small least-recently-used set of graphs, one per
(input shape, input dtype, device, deformable-convolution choice), all in one memory pool (their
scratch memory is shared: they never run at once); a batch smaller than a captured one (the last
chunk of a clip) is padded into it instead of capturing again. Any capture failure falls back to
eager with a one-line warning, and that shape is not tried again.

Off by default: this path has not yet been measured on a GPU (exactness and speed, see
docs/benchmarks.md, "GPU check: prepared, not yet run"). Turn it on for every model with the
environment variable BIREFNET_CUDA_GRAPHS=1, or for one model with `enable(model)`.
It applies only on CUDA, in inference; everything else runs eager as before.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable
from weakref import WeakKeyDictionary

import torch
from torch import nn

from .deform_conv import chosen_implementation

ENV = "BIREFNET_CUDA_GRAPHS"
MAX_GRAPHS = 4  # per model; they share one memory pool, about the largest forward's activation memory
WARMUP_RUNS = 2
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")

log = logging.getLogger("birefnet")
_OVERRIDES: WeakKeyDictionary[nn.Module, bool] = WeakKeyDictionary()
_CACHES: WeakKeyDictionary[nn.Module, GraphCache] = WeakKeyDictionary()


def parse_switch(text: str | None) -> bool:
    """The switch's value: 1/true/yes/on or 0/false/no/off (or unset); anything else is a one-line error."""
    value = (text or "").strip().lower()
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
    """Whether `model`'s forward on `device` runs through CUDA graphs (CUDA only, switch on)."""
    if device.type != "cuda":
        return False
    on = _OVERRIDES.get(model)
    return parse_switch(os.environ.get(ENV)) if on is None else on


def cache_for(model: nn.Module) -> GraphCache:
    """The model's graph cache (created on first use; it lives as long as the model)."""
    cache = _CACHES.get(model)
    if cache is None:
        cache = _CACHES[model] = GraphCache(model)
    return cache


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    static_input: torch.Tensor
    static_output: torch.Tensor


class GraphCache:
    """Captured graphs of one model's forward, least recently used first out.

    `run(forward, x)` replays the graph for x's shape and dtype (capturing it on first sight) and
    returns a fresh copy of the output: the static buffer is overwritten by the next replay.
    Graphs hold raw pointers to the weights, so they are all dropped when the weights move
    (`model.to(...)`, `half()`); in-place loads (`load_state_dict`) keep them valid.
    """

    def __init__(self, model: nn.Module, max_graphs: int = MAX_GRAPHS):
        self.model = model
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, _Graph | None] = OrderedDict()  # None: capture failed, run eager
        self.captures = 0  # graphs captured so far (tests and the benchmark read it)
        self._weights = self._weight_pointers()
        self._lock = threading.Lock()
        self._pools: dict[torch.device, tuple] = {}  # one memory pool per device, shared by its graphs

    def _weight_pointers(self) -> tuple[int, ...]:
        return tuple(t.data_ptr() for t in (*self.model.parameters(), *self.model.buffers()))

    def clear(self) -> None:
        self.graphs.clear()
        self._pools.clear()  # the next capture starts a fresh pool

    def run(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA tensor, got one on {x.device}")
        with self._lock:
            weights = self._weight_pointers()
            if weights != self._weights:
                self.clear()
                self._weights = weights
            key, entry = self._find(x)
            if key not in self.graphs:
                entry = self._capture(forward, x, key)
            self.graphs.move_to_end(key)
            if entry is None:
                return forward(x)
            batch = x.shape[0]
            entry.static_input[:batch].copy_(x)
            entry.graph.replay()
            return entry.static_output[:batch].clone()

    def _find(self, x: torch.Tensor) -> tuple[tuple, _Graph | None]:
        """The exact graph for x, else the smallest captured one it pads into, else x's own key (not cached).
        The deformable-convolution choice is part of the key: a graph replays the kernels it captured."""
        key = (tuple(x.shape), x.dtype, x.device, chosen_implementation())
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
        try:
            with torch.cuda.device(x.device):
                static_input = x.clone()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_RUNS):
                        forward(static_input)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # Graphs of one model never run at once (the lock), and each keeps its output alive,
                # so a later capture may reuse only other graphs' scratch memory: one pool for all.
                if x.device not in self._pools:
                    self._pools[x.device] = torch.cuda.graph_pool_handle()
                pool = self._pools[x.device]
                with torch.cuda.graph(graph, pool=pool):
                    static_output = forward(static_input)
            entry = _Graph(graph, static_input, static_output)
            self.captures += 1
            # The first-call cost users see (warm-up runs, cuDNN/Triton tuning, capture), said once per shape.
            log.info("CUDA graph for input %s %s captured in %.1f s", key[0], key[1], time.perf_counter() - started)
        except Exception as err:  # any failure: eager for this shape from now on, said once
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            log.warning("CUDA graph capture failed for input %s %s (%s); running eager", key[0], key[1], reason)
            entry = None
        self.graphs[key] = entry
        return entry


def run(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`forward(x)` through `model`'s graph cache (x on CUDA)."""
    return cache_for(model).run(forward, x)
