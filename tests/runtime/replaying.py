"""A pipeline replaying through the session seam on the CPU, for the replay tests."""

from __future__ import annotations

from luvc.engines.static_shapes import PREFILL_LENGTH_STEP
from luvc.runtime.pipeline import Pipeline


def replaying_pipeline(folder) -> Pipeline:
    """A pipeline whose sessions replay (ONNX Runtime's CPU EP doing the captures) and pad each prefill as on a GPU."""
    pipeline = Pipeline(folder)
    pipeline.sessions.cuda_graphs, pipeline.sessions.prefill_step = True, PREFILL_LENGTH_STEP
    return pipeline


def plain_tokens(folder, images, prompts, tokens: int):
    """The greedy tokens of ``prompts`` (one image each) on a plain pipeline of ``folder``: what a replayed run must
    give."""
    plain = Pipeline(folder)
    return plain.greedy(plain.prepare(images, prompts), tokens)[0]
