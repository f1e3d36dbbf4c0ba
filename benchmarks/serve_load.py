"""Bounded load test of ``luvc-export serve`` on loopback, with the official ``openai`` client.

Starts the server as its own process on an export (default: the built-in tiny Qwen2-VL, exported at 224x224 into a
temporary folder; ``--export DIR`` for yours), then sends ``--requests`` streamed chat completions from ``--clients``
concurrent clients, each over a few distinct same-size images (so concurrent requests can share a batch). The
baseline, in the same run, is one client sending the same requests one after another. Reports requests/s, p50/p95
time to first token (client-side: request sent -> first text chunk), errors (must be 0 while the clients do not
outnumber the server's queue), the mean rows per pipeline batch (the server's ``luvc_batch_size`` histogram), and
whether every answer equals ``Pipeline.generate`` for its image and prompt. A third run sends the same load with
prompts of ``DISTINCT_IMAGES`` different lengths (one per image): rows of different lengths share a batch, so its
mean batch should stay near the equal-length run's.
Last lines: ``serve_throughput_ratio=<x>`` (requests/s with ``--clients`` over the one-client baseline) and
``mixed_length_batch_ratio=<x>`` (mean batch with mixed prompt lengths over the equal-length run's). Usage:
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


def prompt_of(index: int, mixed: bool) -> str:
    """The prompt of image ``index``: ``PROMPT``, or with ``mixed`` one made longer by ``index`` words."""
    return PROMPT + " Please" * index if mixed else PROMPT


def one_request(
    client: openai.OpenAI, model: str, url: str, max_tokens: int, prompt: str = PROMPT
) -> tuple[str, float, float]:
    """(text, seconds to the first text chunk, seconds in all) of one streamed completion."""
    began = time.perf_counter()
    first, pieces = 0.0, []
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}]
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - began
            pieces.append(chunk.choices[0].delta.content)
    return "".join(pieces), first, time.perf_counter() - began


def batch_totals(base_url: str) -> tuple[float, float]:
    """The server's ``luvc_batch_size`` sum and count (rows and batches so far)."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("luvc_batch_size_sum", "luvc_batch_size_count")):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    return values["luvc_batch_size_sum"], values["luvc_batch_size_count"]


def load(
    base_url: str, model: str, clients: int, requests: int, urls: list[str], max_tokens: int, mixed: bool = False
) -> dict:
    """Send ``requests`` completions from ``clients`` threads (``mixed``: prompts of different lengths); answers per
    image index, TTFTs, errors, seconds, and the mean rows per pipeline batch."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    answers: dict[int, set[str]] = {}
    first_token, errors = [], 0
    rows_before, batches_before = batch_totals(base_url)
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = {
            pool.submit(one_request, client, model, urls[i % len(urls)], max_tokens, prompt_of(i % len(urls), mixed)): i
            % len(urls)
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
    rows, batches = (after - before for after, before in zip(batch_totals(base_url), (rows_before, batches_before)))
    return {
        "answers": answers,
        "ttft": first_token,
        "errors": errors,
        "seconds": seconds,
        "requests": requests,
        "mean_batch": rows / max(batches, 1),
        "mixed": mixed,
    }


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
        options = GenerationOptions(args.max_tokens)
        expected = {
            mixed: [pipeline.generate(image, prompt_of(i, mixed), options).texts[0] for i, image in enumerate(images)]
            for mixed in (False, True)
        }
        urls = [data_url(image) for image in images]
        model = pipeline.manifest.model.id
        process, base_url = start_server(export, max_queue=max(64, args.clients))
        try:
            load(base_url, model, 1, 2, urls, args.max_tokens)  # warm-up
            many = f"{args.clients} clients"
            runs = {
                "1 client": load(base_url, model, 1, args.requests, urls, args.max_tokens),
                many: load(base_url, model, args.clients, args.requests, urls, args.max_tokens),
                f"{many}, {DISTINCT_IMAGES} lengths": load(
                    base_url, model, args.clients, args.requests, urls, args.max_tokens, mixed=True
                ),
            }
        finally:
            process.terminate()
            process.wait(30)
    print(f"{model}, {args.requests} streamed requests of {args.max_tokens} tokens, {DISTINCT_IMAGES} distinct images")
    header = f"{'run':<22} {'req/s':>8} {'p50 TTFT ms':>12} {'p95 TTFT ms':>12} {'errors':>7} {'mean batch':>11}"
    print(header + "  answers equal generate()")
    for name, run in runs.items():
        wanted = expected[run["mixed"]]
        equal = all(run["answers"].get(i, {wanted[i]}) == {wanted[i]} for i in range(len(images)))
        print(
            f"{name:<22} {run['requests'] / run['seconds']:>8.1f} {percentile(run['ttft'], 50) * 1e3:>12.1f} "
            f"{percentile(run['ttft'], 95) * 1e3:>12.1f} {run['errors']:>7} {run['mean_batch']:>11.2f}  {equal}"
        )
    baseline, loaded, mixed = runs.values()
    ratio = (loaded["requests"] / loaded["seconds"]) / (baseline["requests"] / baseline["seconds"])
    print(f"serve_throughput_ratio={ratio:.2f}")
    print(f"mixed_length_batch_ratio={mixed['mean_batch'] / loaded['mean_batch']:.2f}")


if __name__ == "__main__":
    main()
