"""``OrtGraphs``: the exported graphs of one folder driven by ONNX Runtime, with the host work between them.

Host work (README, "Artifacts"): image features replace the placeholder rows of the token embeddings (the image
span is static per bucket), LLM position ids come from the bucket's ``host_*.npz`` plus a running offset, and
each layer's KV cache is passed back to the decode graph with its own length.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from luvc.errors import critical
from luvc.export.manifest import ExportManifest, load_graph


class OrtGraphs:
    """Lazy ONNX Runtime sessions over an export folder (``providers`` default: CPU)."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None, verify: bool = True) -> None:
        self.folder = Path(folder)
        self.manifest = ExportManifest.load(self.folder, verify=verify)
        self.providers = providers or ["CPUExecutionProvider"]
        self._sessions: dict = {}
        self._host: dict[str, dict[str, np.ndarray]] = {}

    def session(self, name: str):
        """The ``onnxruntime.InferenceSession`` of graph ``name`` (created on first use)."""
        if name not in self._sessions:
            try:
                import onnxruntime as ort
            except ImportError:
                critical(
                    f"ONNX Runtime is not installed; run `{sys.executable} -m pip install onnxruntime` "
                    "(or onnxruntime-gpu for CUDA; not both)."
                )

            model = load_graph(self.folder, name, self.manifest)  # clear error on missing external data
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._sessions[name] = ort.InferenceSession(model.SerializeToString(), options, providers=self.providers)
        return self._sessions[name]

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session(name)
        outputs = session.run(None, feeds)
        return dict(zip((o.name for o in session.get_outputs()), outputs))

    def host(self, bucket: dict) -> dict[str, np.ndarray]:
        if bucket["host"] not in self._host:
            with np.load(self.folder / bucket["host"]) as data:
                self._host[bucket["host"]] = {key: data[key] for key in data.files}
        return self._host[bucket["host"]]

    # -- stages ---------------------------------------------------------------------------------------------
    def image_embeds(self, pixel_values: np.ndarray, bucket: dict) -> np.ndarray:
        """``(images, n, D)`` visual embeddings. Qwen-VL pixels ``(images * N, C)`` run one image per call."""
        graph = self.manifest.graphs[bucket["vision"]]
        inputs = graph["inputs"]
        dtype = np.float16 if inputs[0]["dtype"] == "float16" else np.float32
        pixel_values = pixel_values.astype(dtype)
        if len(inputs[0]["shape"]) == 4:  # (B, C, H, W) with a dynamic batch
            return self.run(bucket["vision"], {"pixel_values": pixel_values})["image_embeds"]
        per_image = inputs[0]["shape"][0]
        if pixel_values.shape[0] % per_image or pixel_values.shape[1:] != tuple(inputs[0]["shape"][1:]):
            critical(
                f"{bucket['vision']} takes {per_image} patches of {inputs[0]['shape'][1]} values per image; got "
                f"pixels of shape {pixel_values.shape}. Preprocess with the model's image processor."
            )
        host = self.host(bucket)
        metadata = {entry["name"]: host[entry["name"]] for entry in inputs[1:]}
        chunks = np.split(pixel_values, pixel_values.shape[0] // per_image)
        return np.concatenate(
            [self.run(bucket["vision"], {"pixel_values": chunk, **metadata})["image_embeds"] for chunk in chunks]
        )

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self.run("embed", {"input_ids": input_ids.astype(np.int64)})["inputs_embeds"]

    def positions(self, bucket: dict, batch: int, start: int, length: int) -> np.ndarray:
        """Position ids for ``length`` tokens from prompt index ``start`` (0: the whole prompt), in the graph's
        layout: ``(3, B, S)`` for M-RoPE, ``(B, S)`` otherwise."""
        host = self.host(bucket)
        prompt = host["prompt_position_ids"]
        text_start = int(host["next_position"]) - prompt.shape[1]  # position minus index after the image
        index = np.arange(start, start + length)
        rows = np.where(index < prompt.shape[1], prompt[:, np.minimum(index, prompt.shape[1] - 1)], index + text_start)
        rows = np.broadcast_to(rows[:, None, :], (rows.shape[0], batch, length)).astype(np.int64)
        return rows if rows.shape[0] == 3 else rows[0]

    def prefill(self, input_ids: np.ndarray, image_embeds: np.ndarray, bucket: dict) -> dict[str, np.ndarray]:
        """Prefill outputs for prompts ``input_ids (B, S)`` whose image span holds ``image_embeds (B, n, D)``."""
        start, count = bucket["visual_start"], bucket["tokens_per_image"]
        batch, length = input_ids.shape
        image_token = self.manifest.prompt["image_token_id"]
        if (
            length < start + count + bucket["min_text_tokens"]
            or not (input_ids[:, start : start + count] == image_token).all()
        ):
            critical(
                f"Prompts must hold {count} image tokens at index {start} followed by the text (the export's prompt "
                "template); build them with the same template and bucket."
            )
        embeds = self.embed(input_ids)
        embeds[:, start : start + count] = image_embeds.astype(embeds.dtype)
        return self.run(
            bucket["prefill"], {"inputs_embeds": embeds, "position_ids": self.positions(bucket, batch, 0, length)}
        )

    def greedy(
        self, input_ids: np.ndarray, pixel_values: np.ndarray, image_size: tuple[int, int], max_new_tokens: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(B, max_new_tokens)`` greedy tokens and ``(B, steps, V)`` logits, driven by the exported graphs."""
        bucket = self.manifest.bucket_for(image_size)
        layers = self.manifest.prompt["num_layers"]
        batch, length = input_ids.shape
        outputs = self.prefill(input_ids, self.image_embeds(pixel_values, bucket), bucket)
        tokens, logits = [], [outputs["logits"]]
        past = {
            f"past_key_values.{layer}.{kind}": outputs[f"present.{layer}.{kind}"]
            for layer in range(layers)
            for kind in ("key", "value")
        }
        for step in range(max_new_tokens):
            token = logits[-1].argmax(-1)
            tokens.append(token)
            if step == max_new_tokens - 1:
                break
            feeds = {
                "inputs_embeds": self.embed(token[:, None]),
                "position_ids": self.positions(bucket, batch, length + step, 1),
                **past,
            }
            outputs = self.run("decode", feeds)
            logits.append(outputs["logits"])
            past = {name: outputs[name.replace("past_key_values", "present")] for name in past}
        return np.stack(tokens, axis=1), np.stack(logits, axis=1)
