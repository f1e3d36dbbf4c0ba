"""Triton Inference Server: ``TritonModel``, what the Python-backend model of a repository written by
``luvc-export triton`` (``luvc.serve.repository``) runs inside the server.

Each model instance opens its own ``Pipeline`` on its device, so instances scale like any Triton model: ``count``
per GPU, several GPUs, several servers behind a load balancer (docs/serving.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from luvc.errors import LuvcError, critical
from luvc.images import decode_image
from luvc.prompt import Conversation, Turn
from luvc.runtime.options import GenerationOptions
from luvc.serve.batching import Delta, Event, Failed, Finished, QueueClosed, QueueFull
from luvc.serve.repository import INPUTS
from luvc.serve.service import GenerationService

if TYPE_CHECKING:
    from luvc.runtime.pipeline import Prepared

LOG = logging.getLogger(__name__)
MAX_WAITING = 256  # requests queued behind the running batch of one instance; more are answered "retry later"


def options_from_inputs(inputs: dict[str, np.ndarray], defaults: GenerationOptions) -> tuple[GenerationOptions, bool]:
    """Generation settings and the stream flag of one request's optional inputs (absent: ``defaults``)."""

    def scalar(name: str):
        return inputs[name].reshape(-1)[0].item() if name in inputs else None

    stop = [_text(value, "a stop input") for value in inputs["stop"].reshape(-1)] if "stop" in inputs else None
    options = defaults.with_overrides(
        max_new_tokens=scalar("max_tokens"),
        temperature=scalar("temperature"),
        top_p=scalar("top_p"),
        seed=scalar("seed"),
        stop=stop,
        presence_penalty=scalar("presence_penalty"),
        frequency_penalty=scalar("frequency_penalty"),
    )
    return options, bool(scalar("stream"))


def _text(value, what: str) -> str:
    """A BYTES element as text; one line naming ``what`` when it is not UTF-8."""
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        critical(f"The {what} is not UTF-8 text; send it UTF-8 encoded.")


class TritonModel:
    """What one Triton model instance runs: a ``Pipeline`` on the instance's device behind the ``GenerationService``
    of ``serve`` (its worker thread runs the in-flight batch); ``execute`` queues the requests Triton hands it."""

    def __init__(self, args: dict, parameters: dict[str, str]) -> None:
        from luvc.runtime.pipeline import Pipeline
        from luvc.serve.access_log import server_log

        self.log = contextlib.ExitStack()  # into tritonserver's output: internal errors with their ids, cancellations
        self.log.enter_context(server_log())

        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        export_dir = version_dir / parameters["export_dir"]  # an absolute path stays as it is
        engines = parameters.get("engines_dir") or None
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        self.pipeline = Pipeline(
            export_dir,
            parameters.get("backend", "ort"),
            version_dir / engines if engines else None,
            device=device,
            fit=parameters.get("fit") or None,
            cuda_graphs=parameters.get("cuda_graphs") or None,
        )
        max_batch = json.loads(args["model_config"])["max_batch_size"] or 1
        self.pipeline.load(capture_rows=max_batch)  # with CUDA graphs: the planned shapes captured now
        defaults = GenerationOptions(int(parameters.get("max_new_tokens", "64")))
        # the worker thread of `serve`: requests of later execute calls join the running batch at the next step
        bound = f"the model instance's queue of {MAX_WAITING}"
        self.service = GenerationService(self.pipeline, defaults, MAX_WAITING, max_batch, queue_bound=bound).start()

    def execute(self, requests: list) -> None:
        """Prepare every request on its own (a bad one gets its error response at once, whatever went wrong, and
        never touches the others) and queue it for the worker, then return: the model is decoupled, so each
        request's responses go through its sender from the worker thread, ending with the final flag, while later
        ``execute`` calls bring requests that join the running batch."""
        import triton_python_backend_utils as pb_utils

        for request in requests:
            sender = request.get_response_sender()
            try:
                prepared, options, stream = self._prepare(pb_utils, request)
                # Triton's cancellation (a client's stream stopped with cancel_requests) ends the row at the next step
                gone = getattr(request, "is_cancelled", None)
                self.service.submit(prepared, options, _responder(pb_utils, sender, stream), client_cancelled=gone)
            except (LuvcError, QueueFull, QueueClosed) as error:  # a fixable request, or "retry later"
                _send_error(pb_utils, sender, str(error))
            except Exception:  # one request's failure is its own; nothing internal in the response
                LOG.exception("preparing a request failed")
                _send_error(pb_utils, sender, "This request could not be prepared (an internal error, logged).")

    def _prepare(self, pb_utils, request) -> tuple[Prepared, GenerationOptions, bool]:
        """One request's prepared inputs, generation settings and stream flag (errors: ``LuvcError``)."""
        inputs = {
            name: tensor.as_numpy()
            for name, *_ in INPUTS
            if (tensor := pb_utils.get_input_tensor_by_name(request, name)) is not None
        }
        missing = [name for name, _, _, optional in INPUTS if not optional and name not in inputs]
        if missing:
            critical(f"The request has no {missing[0]!r} input; send a prompt (BYTES) with every request.")
        options, stream = options_from_inputs(inputs, self.service.defaults)
        if "max_tokens" in inputs:  # named as the client sent it
            self.service.check_max_new_tokens(options.max_new_tokens, f"max_tokens={options.max_new_tokens}")
        text = _text(inputs["prompt"].reshape(-1)[0], "prompt input")
        prompt: str | Conversation = text
        image = None
        if "image" in inputs:
            image = decode_image(bytes(inputs["image"].reshape(-1)[0]), "the image input")
        if "system" in inputs:
            system = _text(inputs["system"].reshape(-1)[0], "system input")
            prompt = Conversation((Turn("system", system), Turn("user", text, visual=image is not None)))
        return self.service.prepare(image, prompt, options), options, stream

    def finalize(self) -> None:
        """Let the running requests finish, answer the waiting ones "shutting down", and close the log."""
        self.service.stop()
        self.log.close()


def _responder(pb_utils, sender, stream: bool):
    """The event callback of one request: text pieces as responses when streaming, else one response at the end."""

    def respond(event: Event) -> None:
        if isinstance(event, Delta) and stream:
            sender.send(_response(pb_utils, event.text, ""))
        elif isinstance(event, Finished):
            sender.send(
                _response(pb_utils, "" if stream else event.text, event.finish_reason),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        elif isinstance(event, Failed):
            _send_error(pb_utils, sender, event.message, cancelled=event.kind == "cancelled")

    return respond


def _response(pb_utils, text: str, finish_reason: str):
    tensors = [
        pb_utils.Tensor("text", np.array([[text.encode("utf-8")]], dtype=np.object_)),  # (batch 1, 1)
        pb_utils.Tensor("finish_reason", np.array([[finish_reason.encode("utf-8")]], dtype=np.object_)),
    ]
    return pb_utils.InferenceResponse(output_tensors=tensors)


def _send_error(pb_utils, sender, message: str, cancelled: bool = False) -> None:
    """The request's last response: an error (Triton's CANCELLED code for a cancelled request, where it has one)."""
    code = getattr(pb_utils.TritonError, "CANCELLED", None) if cancelled else None
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
