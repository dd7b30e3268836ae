"""Benchmark of `birefnet serve` (python -m birefnet.server.bench [--weights W] [--image I]
[--backend torch openvino]): the server's overhead over a direct library call on the same image in the
same run, per backend (their requests interleaved), then for the first backend 16 concurrent clients (all
answered, p50/p95 latency) and the server's memory across 100 requests. Prints a Markdown table
(docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from PIL import Image

from ..files import read_image
from ..inference import mask_to_image
from ..loading import load_model
from ..pipeline import finish, segment_image
from ..refine import Refinement

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "images" / "synthetic_0.jpg"


def start_server(weights: str | None, backend: str = "torch") -> tuple[subprocess.Popen, str, Path]:
    log = Path(tempfile.mkdtemp()) / "server.log"
    command = [sys.executable, "-m", "birefnet", "serve", "--port", "0", "--backend", backend]
    command += ["--weights", weights] if weights else []
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    while "at http://" not in log.read_text():
        if process.poll() is not None:
            raise SystemExit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    line = next(line for line in log.read_text().splitlines() if "birefnet: serving" in line)
    return process, line.split(" at ")[1].split()[0], log


def post(url: str, data: bytes) -> float:
    """Seconds for one /v1/segment request (mask output)."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{url}/v1/segment", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - start


def direct(model, image) -> float:
    """Seconds for what the server does for a request, called in this process (PNG encoding included)."""
    start = time.perf_counter()
    mask, _ = segment_image(model, image)
    mask, _ = finish(image, mask, Refinement())
    mask_to_image(mask).save(io.BytesIO(), format="PNG")
    return time.perf_counter() - start


def percentile(values, share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", default=None, help="default: the embedded demo model")
    parser.add_argument("--image", default=str(EXAMPLE))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backend", nargs="+", default=["torch"], choices=("torch", "openvino"))
    args = parser.parse_args(argv)
    data = Path(args.image).read_bytes()
    image = read_image(args.image)
    servers = {backend: start_server(args.weights, backend)[:2] for backend in args.backend}
    try:
        models = {backend: load_model(args.weights, backend=backend) for backend in args.backend}
        library = {backend: [] for backend in args.backend}
        single = {backend: [] for backend in args.backend}
        for backend, (_, url) in servers.items():
            direct(models[backend], image), post(url, data)  # warm-up
        for _ in range(args.repeats):  # interleaved: other load on the machine hits all alike
            for backend, (_, url) in servers.items():
                library[backend].append(direct(models[backend], image))
                single[backend].append(post(url, data))
        del models
        process, url = servers[args.backend[0]]
        with ThreadPoolExecutor(16) as pool:
            start = time.perf_counter()
            concurrent = list(pool.map(lambda _: post(url, data), range(64)))
            wall = time.perf_counter() - start
        server = psutil.Process(process.pid)
        rss = [server.memory_info().rss / 2**20]
        for done in range(1, 101):
            post(url, data)
            if done % 25 == 0:
                rss.append(server.memory_info().rss / 2**20)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait()
    width, height = Image.open(args.image).size
    print(
        f"{args.weights or 'embedded demo model'}, {width}x{height} JPEG, mask output, CPU threads {os.cpu_count()}\n"
    )
    print("| measurement | value |\n|---|---|")
    for backend in args.backend:
        mine = f" ({backend})" if len(args.backend) > 1 else ""
        direct_s, single_s = statistics.median(library[backend]), statistics.median(single[backend])
        print(f"| direct library call (segment + PNG){mine}, median of {args.repeats} | {direct_s * 1000:.0f} ms |")
        print(f"| one client, request to response{mine}, median of {args.repeats} | {single_s * 1000:.0f} ms |")
        print(f"| server overhead per request{mine} (median difference) | {(single_s - direct_s) * 1000:.0f} ms |")
    if len(args.backend) > 1:
        first = statistics.median(single[args.backend[0]])
        for backend in args.backend[1:]:
            ratio = statistics.median(single[backend]) / first
            print(f"| one client: {backend} / {args.backend[0]} time | {ratio:.2f}x |")
    clients = f"16 concurrent clients ({args.backend[0]})" if len(args.backend) > 1 else "16 concurrent clients"
    print(f"| {clients}, 64 requests: answered | {len(concurrent)}/64 |")
    print(
        f"| {clients}: latency p50 / p95 | {percentile(concurrent, 0.5):.2f} s / {percentile(concurrent, 0.95):.2f} s |"
    )
    print(f"| {clients}: throughput | {64 / wall:.1f} requests/s |")
    print(f"| server RSS before / after 25, 50, 75, 100 more requests | {' / '.join(f'{v:.0f}' for v in rss)} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
