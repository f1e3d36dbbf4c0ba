"""Bounded load test of ``luvc-export serve`` on loopback, with the official ``openai`` client.

Starts the server as its own process on an export (default: the built-in tiny Qwen2-VL, exported at 224x224 into a
temporary folder; ``--export DIR`` for yours), then sends ``--requests`` streamed chat completions from ``--clients``
concurrent clients, each over a few distinct same-size images (so concurrent requests can share a batch). The
baseline, in the same run, is one client sending the same requests one after another. Reports requests/s, p50/p95
time to first token (client-side: request sent -> first text chunk), errors (must be 0 while the clients do not
outnumber the server's queue), and whether every answer equals ``Pipeline.generate`` for its image.
Last line: ``serve_throughput_ratio=<x>`` (requests/s with ``--clients`` over the one-client baseline). Usage:
    python benchmarks/serve_load.py [--clients 8] [--requests 64] [--max-tokens 32] [--export DIR]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai

from luvc.export.exporter import export_model
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.runtime.pipeline import GenerationOptions, Pipeline

PROMPT = "Describe the image."
DISTINCT_IMAGES = 8


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def start_server(export: Path, max_queue: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "luvc.cli.main", "serve", str(export), "--port", str(port)]
    process = subprocess.Popen([*command, "--max-queue", str(max_queue)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


def one_request(client: openai.OpenAI, model: str, url: str, max_tokens: int) -> tuple[str, float, float]:
    """(text, seconds to the first text chunk, seconds in all) of one streamed completion."""
    began = time.perf_counter()
    first, pieces = 0.0, []
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROMPT}]
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - began
            pieces.append(chunk.choices[0].delta.content)
    return "".join(pieces), first, time.perf_counter() - began


def load(base_url: str, model: str, clients: int, requests: int, urls: list[str], max_tokens: int) -> dict:
    """Send ``requests`` completions from ``clients`` threads; answers per image index, TTFTs, errors, seconds."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    answers: dict[int, set[str]] = {}
    first_token, errors = [], 0
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = {
            pool.submit(one_request, client, model, urls[i % len(urls)], max_tokens): i % len(urls)
            for i in range(requests)
        }
        for future in concurrent.futures.as_completed(futures):
            try:
                text, ttft, _ = future.result()
            except openai.APIError:
                errors += 1
                continue
            answers.setdefault(futures[future], set()).add(text)
            first_token.append(ttft)
    seconds = time.perf_counter() - began
    return {"answers": answers, "ttft": first_token, "errors": errors, "seconds": seconds, "requests": requests}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--export", type=Path, default=None, help="export folder (default: tiny Qwen2-VL, 224x224)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export = args.export
        if export is None:
            profile = ExportProfile(image_sizes=((224, 224),))
            export = export_model(load_model("tiny-qwen2-vl"), Path(tmp) / "export", profile, show_progress=False)
        pipeline = Pipeline(export)
        height, width = next(iter(pipeline.manifest.buckets.values())).image_size
        images = [synthetic_image(height, width, seed) for seed in range(DISTINCT_IMAGES)]
        expected = [pipeline.generate(image, PROMPT, GenerationOptions(args.max_tokens)).texts[0] for image in images]
        urls = [data_url(image) for image in images]
        model = pipeline.manifest.model.id
        process, base_url = start_server(export, max_queue=max(64, args.clients))
        try:
            load(base_url, model, 1, 2, urls, args.max_tokens)  # warm-up
            runs = {
                "1 client": load(base_url, model, 1, args.requests, urls, args.max_tokens),
                f"{args.clients} clients": load(base_url, model, args.clients, args.requests, urls, args.max_tokens),
            }
        finally:
            process.terminate()
            process.wait(30)
    print(f"{model}, {args.requests} streamed requests of {args.max_tokens} tokens, {DISTINCT_IMAGES} distinct images")
    print(f"{'run':<12} {'req/s':>8} {'p50 TTFT ms':>12} {'p95 TTFT ms':>12} {'errors':>7}  answers equal generate()")
    for name, run in runs.items():
        equal = all(run["answers"].get(i, {expected[i]}) == {expected[i]} for i in range(len(images)))
        print(
            f"{name:<12} {run['requests'] / run['seconds']:>8.1f} {percentile(run['ttft'], 50) * 1e3:>12.1f} "
            f"{percentile(run['ttft'], 95) * 1e3:>12.1f} {run['errors']:>7}  {equal}"
        )
    baseline, loaded = runs.values()
    ratio = (loaded["requests"] / loaded["seconds"]) / (baseline["requests"] / baseline["seconds"])
    print(f"serve_throughput_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
