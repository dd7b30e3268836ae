"""The one model in memory and the one thread that runs it: requests wait in line (at most
--max-queue of them), so two forward passes never race on a GPU; only the first few in line hold
their decoded image. Picking other weights loads them in that thread and replaces the model; a
request that fails changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..device import auto_dtype, parse_dtype, resolve_device
from ..errors import CheckpointError
from ..inference import model_resolution
from ..loading import load_model
from ..pass_clock import learn_from_a_small_pass
from .errors import RequestError
from .progress import Registry
from .weights import Catalog, model_name

# Requests holding a decoded image at once: the one the model runs and the next, decoded meanwhile so
# the model never waits for a decode. The rest of the line waits undecoded (an upload over 1 MB waits
# in a temporary file), so 64 clients sending 100-megapixel photos cost two photos' memory, not 64.
DECODED_AT_ONCE = 2
# What a full line's 503 tells clients to wait before trying again (Retry-After: urllib3's Retry and other
# HTTP clients wait this long instead of retrying at once, which would only meet the same full line)
RETRY_AFTER_SECONDS = 2


class Worker:
    def __init__(self, weights, device: str, dtype: str, catalog: Catalog, max_queue: int, backend: str = "torch"):
        self.backend = backend
        self.device = resolve_device("cpu" if backend == "openvino" and device == "auto" else device)
        self.dtype = auto_dtype(self.device) if dtype == "auto" else parse_dtype(dtype)
        self.catalog, self.max_queue = catalog, max_queue
        self.default = weights
        self.model = self._load(weights, convert=True)
        self.model_source = weights  # what the loaded model was loaded from
        # the default's name, kept from start: once other weights are loaded, the loaded model's name
        # no longer says which name means the default
        self.default_name = self.name
        self.waiting = 0  # changed on the event loop's thread only
        self.progress = Registry()  # the requests in flight that named themselves
        self._decoded = asyncio.Semaphore(DECODED_AT_ONCE)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="birefnet-model")

    @property
    def name(self) -> str:
        return model_name(self.model)

    def refusal(self) -> RequestError | None:
        """The 503 a request meets while the line is full, else None: asked as a segment request arrives, before
        its upload is read (app.py's SegmentGate), and again as it takes its place."""
        if self.waiting < self.max_queue:
            return None
        return RequestError(
            503,
            f"the server is busy ({self.waiting} requests waiting); try again shortly",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    @contextlib.asynccontextmanager
    async def place(self):
        """A place in the line, taken before the upload is decoded (a full line refuses a request before it
        costs memory) and given back when its answer is ready."""
        refusal = self.refusal()
        if refusal is not None:
            raise refusal
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1

    @contextlib.asynccontextmanager
    async def turn(self):
        """Held from decoding a request's image to its answer: at most DECODED_AT_ONCE requests hold one,
        in the order they came (a request cancelled while it waits for its turn just leaves)."""
        async with self._decoded:
            yield

    async def run(self, job: Callable, weights: str | None = None):
        """job(model) in the model's thread, after the requests before it, with the weights it named.
        Cancelled while it waits (its client went away), it never runs."""
        source = self.default if weights in (None, self.default_name) else self.catalog.source(weights)
        return await asyncio.wrap_future(self._thread.submit(self._call, job, source))

    def _load(self, source, convert: bool = False):
        """The model for `source`. On OpenVINO a request never waits minutes for a graph to be converted: the
        default model's working size is converted as the server starts (`convert`; cached for later starts),
        and sizes with no converted graph in the cache run in PyTorch."""
        model = load_model(source, device=self.device, dtype=self.dtype, backend=self.backend)
        learn_from_a_small_pass(model)  # on a CPU: the first request's progress moves within its passes too
        if self.backend == "openvino":
            model.converts_new_sizes = False
            if convert and model_resolution(model) != "aspect":
                model.prepare(model_resolution(model))
        return model

    def _call(self, job: Callable, source):
        if source != self.model_source:
            try:
                model = self._load(source)
            except CheckpointError as err:
                raise RequestError(400, f"weights could not be loaded: {err}") from None
            self.model, self.model_source = model, source
        return job(self.model)

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
