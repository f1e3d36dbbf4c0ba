"""Serving an export: an OpenAI-compatible HTTP server (``luvc-export serve``) and a Triton Inference Server model
repository (``luvc-export triton``), both over ``luvc.runtime.Pipeline``."""
