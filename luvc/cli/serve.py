"""``luvc-export serve``: an OpenAI-compatible HTTP server over an export (ONNX Runtime) or its engines (TensorRT)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from rich.console import Console

from luvc import interrupts
from luvc.cli.args.runtime import RuntimeArgs
from luvc.cuda_graphs import DEFAULT_CAPTURE_MIB
from luvc.errors import critical
from luvc.serve.access import (
    API_KEY_ENV,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_READ_TIMEOUT_S,
    AccessPolicy,
    is_loopback,
)
from luvc.startup import ready_after


class Serve:
    """Serve an export at /v1/chat/completions (OpenAI-compatible, with streaming), /v1/models, /health and
    /metrics (Prometheus). The generation options below are the defaults for what a request leaves out."""

    name = "serve"
    install = "serve"
    subscriptions = (RuntimeArgs,)

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Server")
        group.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        group.add_argument("--port", type=int, default=8000, help="port (default 8000)")
        group.add_argument("--model-name", default=None, help="model id clients use (default: the export's model)")
        group.add_argument(
            "--allow-local-images",
            default=None,
            metavar="FOLDER",
            help="also accept image_url paths (or file:// URLs) inside FOLDER; off by default (data URLs only)",
        )
        group.add_argument(
            "--max-queue", type=int, default=64, help="requests waiting behind the running batch; more get HTTP 429"
        )
        group.add_argument(
            "--max-batch", type=int, default=None, help="requests per batch (default: the export's --max-batch)"
        )
        group.add_argument(
            "--capture-mib",
            type=int,
            default=DEFAULT_CAPTURE_MIB,
            help="with CUDA graphs replayed: capture the export's shapes (`inspect` lists them) at start, the "
            f"smallest first, up to this many MiB of replay buffers (default {DEFAULT_CAPTURE_MIB}); the rest are "
            "captured when a request first meets them; 0 captures nothing at start",
        )
        group.add_argument(
            "--api-key",
            default=None,
            help=f"require Authorization: Bearer KEY on every path but /health (default: ${API_KEY_ENV} if set; "
            "prefer the variable, a flag shows in the process list)",
        )
        group.add_argument(
            "--allowed-hosts",
            default=None,
            metavar="NAMES",
            help="comma-separated names the Host header may give besides the bind address (a DNS name or proxy in "
            "front of the server); bound to 0.0.0.0 without it, any host is answered",
        )
        group.add_argument(
            "--max-body-bytes",
            type=int,
            default=DEFAULT_MAX_BODY_BYTES,
            help=f"largest request body; larger gets HTTP 413 before it is read (default {DEFAULT_MAX_BODY_BYTES})",
        )
        group.add_argument("--docs", action="store_true", help="serve FastAPI's /docs and /openapi.json (off)")
        group.add_argument(
            "--lenient",
            action="store_true",
            help="ignore request fields the server does not know, stream_options without stream, a data URL's media "
            "type, and take max_completion_tokens over a different max_tokens (default: refuse each with a 400 "
            "naming the field, as OpenAI does, so that a typo never changes an answer silently)",
        )
        group.add_argument(
            "--no-access-log",
            dest="access_log",
            action="store_false",
            help="print no access-log line per request (default: one line on stderr with the request id, status, "
            "tokens and timings; never the prompt)",
        )
        _add_timeouts(parser.add_argument_group("Timeouts"))

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        options = groups[RuntimeArgs]
        image_folder = _image_folder(args.allow_local_images)
        if args.max_queue < 1:
            critical(f"--max-queue {args.max_queue}: let at least 1 request wait.")
        for flag, value, low in (
            ("--drain-timeout", args.drain_timeout, 0.0),
            ("--request-timeout", args.request_timeout, 0.001),
            ("--queue-timeout", args.queue_timeout, 0.001),
            ("--read-timeout", args.read_timeout, 0.001),
        ):
            if not low <= value <= 86400:  # NaN fails too
                critical(f"{flag} {value}: give {low:g} to 86400 seconds.")
        if args.capture_mib < 0:
            critical(f"--capture-mib {args.capture_mib}: give 0 (capture nothing at start) or more MiB.")
        if args.max_body_bytes < 1024:
            critical(f"--max-body-bytes {args.max_body_bytes}: allow at least 1024 bytes (an image needs more).")
        allowed = tuple(name.strip() for name in (args.allowed_hosts or "").split(",") if name.strip())
        access = AccessPolicy.for_bind(
            args.host, args.api_key, allowed, args.max_body_bytes, args.docs, args.read_timeout
        )
        listener = _listen(args.host, args.port)

        from luvc.runtime.opening import request_graphs

        # every request's sessions open beside the imports (on the CPU begun before the runtime's, torch) and checks
        pipeline = options.opening_pipeline(request_graphs)
        with pipeline.sessions.opener.cancelled_on_error():
            import uvicorn

            from luvc.serve.access_log import server_log
            from luvc.serve.app import create_app
            from luvc.serve.server import DrainingServer
            from luvc.serve.service import GenerationService

            max_batch = pipeline.manifest.profile.max_batch
            if args.max_batch is not None and not 1 <= args.max_batch <= max_batch:
                critical(f"--max-batch {args.max_batch} must be between 1 and the export profile's {max_batch}.")
            defaults = options.generation_options()
            pipeline.manifest.profile.check_max_new_tokens(defaults.max_new_tokens)
        service = GenerationService(
            pipeline, defaults, args.max_queue, args.max_batch, image_folder, queue_timeout_s=args.queue_timeout
        )
        with Console(stderr=True).status("Opening the sessions"):
            # a provider or session that cannot open stops here, before the server is announced
            rows = service.max_batch if args.capture_mib else None
            pipeline.load(capture_rows=rows, capture_budget_mib=args.capture_mib)
        ready = ready_after(pipeline.sessions.opening_seconds())
        model_name = args.model_name or pipeline.manifest.model.id
        host, port = listener.getsockname()[:2]
        replay = "CUDA graphs replayed" if pipeline.sessions.cuda_graphs else "no CUDA graphs"
        if pipeline.capture_report is not None:
            replay += f": {pipeline.capture_report}"
        Console(soft_wrap=True).print(
            f"Serving {model_name} ({pipeline.backend_description()} on {pipeline.device}, {replay}, buckets "
            f"{', '.join(pipeline.manifest.buckets)}) at http://{host}:{port}/v1; ready in {ready} since the "
            "process started; Ctrl-C stops.",
            highlight=False,
        )
        if access.api_key is None and not is_loopback(args.host):
            Console(stderr=True, soft_wrap=True).print(
                f"warning: serving on {args.host} without an API key: anyone who reaches this address can use the "
                f"model; set {API_KEY_ENV} (or --api-key).",
                highlight=False,
            )
        app = create_app(service, model_name, access, request_timeout_s=args.request_timeout, lenient=args.lenient)
        config = uvicorn.Config(app, log_level="warning")
        try:
            with server_log(args.access_log):
                DrainingServer(config, service, args.drain_timeout, args.read_timeout).run(sockets=[listener])
        except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises the signal that stopped it
            pass
        interrupts.reset()  # Ctrl-C and SIGTERM are how a server stops: a normal end, exit code 0
        Console().print("Server stopped.")
        return 0


def _add_timeouts(group) -> None:
    """serve's deadlines: a request's, a queued request's, a client's head and body, and the drain on shutdown."""
    group.add_argument(
        "--request-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a request still unanswered this long after it was queued is stopped: HTTP 408, or an error event "
        "in a stream (default 300)",
    )
    group.add_argument(
        "--queue-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a request that waited this long in the queue is answered 503 with Retry-After instead of run "
        "(default 60)",
    )
    group.add_argument(
        "--read-timeout",
        type=float,
        default=DEFAULT_READ_TIMEOUT_S,
        metavar="SECONDS",
        help="a client must send a request's head within this long of connecting (or of its previous answer), "
        f"else the connection is closed, and then its body, else HTTP 408 (default {DEFAULT_READ_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM or Ctrl-C: how long the running batch may finish (new requests get 503, waiting ones "
        "'shutting down, retry'); rows still running then end with an error (default 10)",
    )


def _image_folder(folder: str | None) -> Path | None:
    if folder is None:
        return None
    path = Path(folder)
    if not path.is_dir():
        critical(f"--allow-local-images {folder}: not a folder; pass the folder clients' image paths are in.")
    return path


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket for ``host:port``, or one line saying why not (checked before the sessions load)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except (OSError, OverflowError) as error:
        critical(f"Cannot listen on {host}:{port} ({error}); pick another --port or --host.")
    return listener
