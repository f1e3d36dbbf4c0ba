"""Bounded load test of ``luvc-export serve`` on loopback, with the official ``openai`` client.

Starts the server as its own process on an export (default: the built-in tiny Qwen2-VL, exported at 224x224 into a
temporary folder; ``--export DIR`` for yours), then sends ``--requests`` streamed chat completions from ``--clients``
concurrent clients, each over a few distinct same-size images. The baseline, in the same run, is one client sending
the same requests one after another. Reports requests/s, p50/p95 time to first token (client-side: request sent ->
first text chunk), errors (must be 0 while the clients do not outnumber the server's queue), the mean requests per
decode step (the server's ``luvc_batch_size`` histogram: the in-flight batch), and whether every answer equals
``Pipeline.generate`` for its image, prompt and sampling.

A mixed run sends the same number of requests from ``MIXED_CLIENTS`` clients with ``MIXED_LENGTHS`` distinct prompt
lengths and two sampling settings (greedy, and seeded sampling): in-flight batching keeps the batch full whatever the
lengths and settings. Then a 1-token request is sent while a 256-token answer is being generated, and alone: with
in-flight batching it joins at the next step instead of waiting for the long answer. Last, ``--rss-requests`` short
requests measure the server's resident memory growth (after a warm-up of the same requests).
Last lines: ``serve_throughput_ratio=<x>`` (requests/s with ``--clients`` over the one-client baseline),
``mixed_batch_mean=<x>`` (target >= 3 of the default 4 rows), ``short_behind_long_ttft_ratio=<x>`` (target <= 2) and
``rss_growth_per_1000=<MiB>`` (target <= 5). Usage:
    python benchmarks/serve_load.py [--clients 8] [--requests 64] [--max-tokens 32] [--rss-requests 5000]
        [--export DIR]
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import openai
from common import arguments

from luvc.export.exporter import export_model
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.runtime.pipeline import GenerationOptions, Pipeline
from luvc.runtime.sampling import SamplingConfig

PROMPT = "Describe the image."
DISTINCT_IMAGES = 8
MIXED_CLIENTS = 16
MIXED_LENGTHS = 16
SEEDED = SamplingConfig(temperature=0.7, seed=1234)
LONG_TOKENS = 256


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def start_server(export: Path, max_queue: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "luvc.cli.main", "serve", str(export), "--port", str(port)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # the access log would fill the output
    process = subprocess.Popen([*command, "--max-queue", str(max_queue)], **quiet)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of request: its image, prompt and sampling."""

    image: int
    prompt: str = PROMPT
    sampling: SamplingConfig = SamplingConfig()

    @classmethod
    def of(cls, index: int, mixed: bool) -> Kind:
        """Request ``index``'s kind: image ``index`` with ``PROMPT``, or with ``mixed`` one of ``MIXED_LENGTHS``
        prompts (longer by ``index`` words) on image ``index % DISTINCT_IMAGES``, every second one sampled."""
        if not mixed:
            return cls(index % DISTINCT_IMAGES)
        index %= MIXED_LENGTHS
        return cls(index % DISTINCT_IMAGES, PROMPT + " Please" * index, SEEDED if index % 2 else SamplingConfig())


def one_request(
    client: openai.OpenAI, model: str, url: str, max_tokens: int, kind: Kind = Kind(0), started=None
) -> tuple[str, float, float]:
    """(text, seconds to the first text chunk, seconds in all) of one streamed completion; ``started`` (an event) is
    set at its first text."""
    began = time.perf_counter()
    first, pieces = 0.0, []
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": kind.prompt}]
    sampling = {}
    if not kind.sampling.greedy:
        sampling = {"temperature": kind.sampling.temperature, "seed": kind.sampling.seed}
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, stream=True, **sampling
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if started is not None:  # generating: its first text arrived
                started.set()
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
    """Send ``requests`` completions from ``clients`` threads (``mixed``: ``Kind.of`` mixed kinds); answers per kind,
    TTFTs, errors, seconds, and the mean requests per decode step."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    answers: dict[Kind, set[str]] = {}
    first_token, errors = [], 0
    rows_before, batches_before = batch_totals(base_url)
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        kinds = [Kind.of(i, mixed) for i in range(requests)]
        futures = {pool.submit(one_request, client, model, urls[kind.image], max_tokens, kind): kind for kind in kinds}
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
    }


def short_behind_long(base_url: str, model: str, url: str, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of a 1-token request alone, and sent while a ``LONG_TOKENS``-token answer is being generated."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    alone, behind = [], []
    short = Kind(0, "Hi.")
    for _ in range(repeats):
        alone.append(one_request(client, model, url, 1, short)[2])
        started = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            long = pool.submit(one_request, client, model, url, LONG_TOKENS, Kind(1), started)
            started.wait(120)
            behind.append(one_request(client, model, url, 1, short)[2])
            long.result()
    return statistics.median(alone), statistics.median(behind)


def rss_growth(base_url: str, model: str, url: str, pid: int, requests: int) -> float:
    """MiB the server's resident memory grew over ``requests`` 2-token requests from 4 clients, after as many
    warm-up requests (so caches and pools are full), per 1,000 requests."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)

    def burst() -> None:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: one_request(client, model, url, 2, Kind(0, f"Say {i % 50}.")), range(requests)))

    burst()
    before = resident_mib(pid)
    burst()
    return (resident_mib(pid) - before) / (requests / 1000)


def resident_mib(pid: int) -> float:
    """The process's resident memory (``VmRSS``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS in /proc (this benchmark's memory figure needs Linux)")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = arguments(__doc__, clients=8, requests=64, max_tokens=32, rss_requests=5000)
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
        kinds = {Kind.of(i, mixed) for mixed in (False, True) for i in range(MIXED_LENGTHS)}
        expected = {
            kind: pipeline.generate(
                images[kind.image], kind.prompt, GenerationOptions(args.max_tokens, kind.sampling)
            ).texts[0]
            for kind in kinds
        }
        urls = [data_url(image) for image in images]
        model = pipeline.manifest.model.id
        process, base_url = start_server(export, max_queue=max(64, args.clients, MIXED_CLIENTS))
        try:
            load(base_url, model, 1, 2, urls, args.max_tokens)  # warm-up
            many = f"{args.clients} clients"
            runs = {
                "1 client": load(base_url, model, 1, args.requests, urls, args.max_tokens),
                many: load(base_url, model, args.clients, args.requests, urls, args.max_tokens),
                f"{MIXED_CLIENTS} clients, mixed": load(
                    base_url, model, MIXED_CLIENTS, args.requests, urls, args.max_tokens, mixed=True
                ),
            }
            alone_s, behind_s = short_behind_long(base_url, model, urls[0])
            growth = rss_growth(base_url, model, urls[0], process.pid, args.rss_requests)
        finally:
            process.terminate()
            process.wait(30)
    print(f"{model}, {args.requests} streamed requests of {args.max_tokens} tokens, {DISTINCT_IMAGES} distinct images")
    header = f"{'run':<22} {'req/s':>8} {'p50 TTFT ms':>12} {'p95 TTFT ms':>12} {'errors':>7} {'mean batch':>11}"
    print(header + "  answers equal generate()")
    for name, run in runs.items():
        equal = all(texts == {expected[kind]} for kind, texts in run["answers"].items())
        print(
            f"{name:<22} {run['requests'] / run['seconds']:>8.1f} {percentile(run['ttft'], 50) * 1e3:>12.1f} "
            f"{percentile(run['ttft'], 95) * 1e3:>12.1f} {run['errors']:>7} {run['mean_batch']:>11.2f}  {equal}"
        )
    print(f"1-token request: {alone_s * 1e3:.1f} ms alone, {behind_s * 1e3:.1f} ms behind a {LONG_TOKENS}-token answer")
    print(f"resident memory growth over {args.rss_requests} requests: {growth:.2f} MiB per 1000")
    baseline, loaded, mixed = runs.values()
    ratio = (loaded["requests"] / loaded["seconds"]) / (baseline["requests"] / baseline["seconds"])
    print(f"serve_throughput_ratio={ratio:.2f}")
    print(f"mixed_batch_mean={mixed['mean_batch']:.2f}")
    print(f"short_behind_long_ttft_ratio={behind_s / alone_s:.2f}")
    print(f"rss_growth_per_1000={growth:.2f}")


if __name__ == "__main__":
    main()
