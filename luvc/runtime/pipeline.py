"""``Pipeline``: image + prompt -> text over the exported graphs (ONNX Runtime) or their engines (TensorRT).

Preprocessing is the model's own ``transformers`` image processor and tokenizer, saved in the export folder. The
host work between the graphs (README, "Artifacts"): image features overwrite the prompt's image span (static per
bucket) in the token embeddings; position ids come from the bucket's ``host_*.npz`` plus a running offset; every
layer's KV cache keeps its own length in a ``KVCache`` preallocated for the request.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from luvc.errors import critical
from luvc.export.manifest import ExportManifest, load_graph
from luvc.runtime.kv_cache import KVCache
from luvc.runtime.sampling import SamplingConfig, next_tokens
from luvc.runtime.session import BaseSession, OrtSession, TrtSession

BACKENDS = ("ort", "trt")


@dataclasses.dataclass
class Timings:
    """Wall times of one request, in milliseconds, and the KV-cache bytes after the prompt."""

    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0
    decode_ms: float = 0.0
    new_tokens: int = 0
    kv_cache_bytes: int = 0
    session_ms: float = 0.0  # time spent inside session runs (the rest is pipeline overhead)

    @property
    def decode_tokens_per_second(self) -> float:
        steps = max(self.new_tokens - 1, 0)
        return steps / (self.decode_ms / 1e3) if self.decode_ms > 0 else 0.0


@dataclasses.dataclass
class Generation:
    texts: list[str]
    tokens: np.ndarray  # (B, new tokens)
    timings: Timings


class Pipeline:
    """Generation over an export folder. ``backend="trt"`` runs the engines of ``engines_dir`` (built from this
    export by ``luvc-export build``); ``providers`` picks ONNX Runtime execution providers."""

    def __init__(
        self,
        export_dir: str | Path,
        backend: str = "ort",
        engines_dir: str | Path | None = None,
        providers: list[str] | None = None,
        verify: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            critical(f"Backend {backend!r} is not one of {list(BACKENDS)}.")
        self.folder = Path(export_dir)
        self.manifest = ExportManifest.load(self.folder, verify=verify)
        self.backend = backend
        self.providers = providers
        self.engines_dir = None if engines_dir is None else Path(engines_dir)
        if backend == "trt" and self.engines_dir is None:
            critical("--backend trt needs the engine folder built from this export: pass --engines ENGINE_DIR.")
        self._sessions: dict[str, BaseSession] = {}
        self._host: dict[str, dict[str, np.ndarray]] = {}
        self._tokenizer = self._processor = None

    # -- sessions and files ---------------------------------------------------------------------------------
    def session(self, name: str) -> BaseSession:
        """The session of graph ``name`` (created and activated on first use)."""
        if name not in self._sessions:
            graph = self.manifest.graphs[name]
            if self.backend == "ort":
                load_graph(self.folder, name, self.manifest)  # clear error on missing external data
                session = OrtSession(
                    self.folder / graph["file"],
                    graph["inputs"],
                    graph["outputs"],
                    self.providers,
                    basic_optimizations=self.manifest.precision == "fp8",
                )
            else:
                session = self._trt_session(name, graph)
            self._sessions[name] = session.activate()
        return self._sessions[name]

    def _trt_session(self, name: str, graph: dict) -> TrtSession:
        from luvc.engines.builder import device_capability
        from luvc.engines.manifest import EngineManifest
        from luvc.engines.trt_module import import_tensorrt

        engines = EngineManifest.load(self.engines_dir)
        tensorrt = import_tensorrt(engines.tensorrt["module"])
        engine = engines.check_engine(self.engines_dir, name, tensorrt, device_capability(), export=self.manifest)
        profile = {key: [list(s) for s in shapes] for key, shapes in engines.engines[name]["profile"].items()}
        return TrtSession(engine, graph["inputs"], graph["outputs"], profile, tensorrt, name=f"trt:{name}")

    def host(self, bucket: dict) -> dict[str, np.ndarray]:
        if bucket["host"] not in self._host:
            with np.load(self.folder / bucket["host"]) as data:
                self._host[bucket["host"]] = {key: data[key] for key in data.files}
        return self._host[bucket["host"]]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.folder / "tokenizer", local_files_only=True)
        return self._tokenizer

    @property
    def processor(self):
        if self._processor is None:
            from transformers import AutoImageProcessor

            self._processor = AutoImageProcessor.from_pretrained(self.folder / "processor", local_files_only=True)
        return self._processor

    def load(self, image_size: tuple[int, int] | None = None) -> Pipeline:
        """Create the sessions a request of ``image_size`` (default: every bucket) needs, so timings exclude it."""
        buckets = [self.manifest.bucket_for(image_size)] if image_size else list(self.manifest.buckets.values())
        for name in ("embed", "decode", *(b[key] for b in buckets for key in ("vision", "prefill"))):
            self.session(name)
        return self

    def session_providers(self) -> list[str]:
        """The ONNX Runtime execution providers the open sessions really got (empty for TensorRT)."""
        return sorted({name for session in self._sessions.values() for name in getattr(session, "providers", [])})

    def session_seconds(self) -> float:
        return sum(session.total_inference_seconds for session in self._sessions.values())

    # -- stages ---------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, tuple[int, int]]:
        """Pixels for the vision graph, exactly as the model's image processor makes them, and the bucket size."""
        pixels = self.processor(images=list(images), return_tensors="np")
        if "image_grid_thw" in pixels:
            grids = {tuple(grid) for grid in np.asarray(pixels["image_grid_thw"]).tolist()}
            if len(grids) > 1:
                critical(f"Images of one batch must share a size after preprocessing; got grids {sorted(grids)}.")
            _, height, width = grids.pop()
            patch = self.manifest.prompt["patch_size"]
            return np.asarray(pixels["pixel_values"]), (height * patch, width * patch)
        values = np.asarray(pixels["pixel_values"])
        return values, tuple(values.shape[-2:])

    def vision_feeds(self, pixel_values: np.ndarray, bucket: dict) -> list[dict[str, np.ndarray]]:
        """The feeds of the vision graph's calls for ``pixel_values``: one call for a ``(B, C, H, W)`` batch; one
        per image for Qwen-VL pixels ``(images * N, C)``, with the bucket's host-planned metadata."""
        inputs = self.manifest.graphs[bucket["vision"]]["inputs"]
        dtype = np.float16 if inputs[0]["dtype"] == "float16" else np.float32
        pixel_values = pixel_values.astype(dtype)
        if len(inputs[0]["shape"]) == 4:  # (B, C, H, W) with a dynamic batch
            return [{"pixel_values": pixel_values}]
        per_image = inputs[0]["shape"][0]
        if pixel_values.ndim != 2 or pixel_values.shape[0] % per_image:
            critical(
                f"{bucket['vision']} takes {per_image} patches per image; got pixels of shape {pixel_values.shape}. "
                "Preprocess with the model's image processor."
            )
        host = self.host(bucket)
        metadata = {entry["name"]: host[entry["name"]] for entry in inputs[1:]}
        return [{"pixel_values": c, **metadata} for c in np.split(pixel_values, pixel_values.shape[0] // per_image)]

    def image_embeds(self, pixel_values: np.ndarray, bucket: dict) -> np.ndarray:
        """``(images, n, D)`` visual embeddings."""
        session = self.session(bucket["vision"])
        return np.concatenate(
            [session.infer(feeds)["image_embeds"] for feeds in self.vision_feeds(pixel_values, bucket)]
        )

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self.session("embed").infer({"input_ids": input_ids.astype(np.int64)})["inputs_embeds"]

    def positions(self, bucket: dict, batch: int, start: int, length: int) -> np.ndarray:
        """Position ids of ``length`` tokens from prompt index ``start``: ``(3, B, S)`` M-RoPE or ``(B, S)``."""
        host = self.host(bucket)
        prompt = host["prompt_position_ids"]
        text_offset = int(host["next_position"]) - prompt.shape[1]  # text positions minus their index
        index = np.arange(start, start + length)
        rows = np.where(index < prompt.shape[1], prompt[:, np.minimum(index, prompt.shape[1] - 1)], index + text_offset)
        rows = np.broadcast_to(rows[:, None, :], (rows.shape[0], batch, length)).astype(np.int64)
        return rows if rows.shape[0] == 3 else rows[0]

    def prefill_feeds(self, input_ids: np.ndarray, image_embeds: np.ndarray, bucket: dict) -> dict[str, np.ndarray]:
        """Prefill feeds for prompts ``input_ids (B, S)`` whose image span takes ``image_embeds (B, n, D)``."""
        start, count = bucket["visual_start"], bucket["tokens_per_image"]
        batch, length = input_ids.shape
        image_token = self.manifest.prompt["image_token_id"]
        if (
            length < start + count + bucket["min_text_tokens"]
            or not (input_ids[:, start : start + count] == image_token).all()
        ):
            critical(
                f"Prompts must hold {count} image tokens at index {start} followed by the text (the export's prompt "
                "template); build them with prompt_ids() for the same bucket."
            )
        embeds = self.embed(input_ids)
        embeds[:, start : start + count] = image_embeds.astype(embeds.dtype)
        return {"inputs_embeds": embeds, "position_ids": self.positions(bucket, batch, 0, length)}

    def prefill(self, input_ids: np.ndarray, image_embeds: np.ndarray, bucket: dict) -> dict[str, np.ndarray]:
        """Prefill outputs (last-token logits, every layer's KV, kept visual indices) for ``prefill_feeds``."""
        return self.session(bucket["prefill"]).infer(self.prefill_feeds(input_ids, image_embeds, bucket))

    def prompt_ids(self, prompts: Sequence[str], bucket: dict) -> np.ndarray:
        """Token ids of the export's prompt template around each prompt; rows must tokenize to one length."""
        prompt = self.manifest.prompt
        image = prompt["image_placeholder"] * bucket["tokens_per_image"]
        texts = [prompt["template"].format(image=image, prompt=text) for text in prompts]
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if len({len(row) for row in rows}) > 1:
            critical("Batched prompts tokenize to different lengths; batch rows need prompts of equal length.")
        text_tokens = len(rows[0]) - bucket["visual_start"] - bucket["tokens_per_image"]
        limit = self.manifest.profile["max_text_tokens"]
        if text_tokens > limit:
            critical(
                f"The prompt has {text_tokens} text tokens after the image but the export profile allows "
                f"{limit}; shorten it or re-export with --max-text-tokens {text_tokens}."
            )
        return np.asarray(rows, dtype=np.int64)

    # -- generation -----------------------------------------------------------------------------------------
    def generate_tokens(
        self,
        input_ids: np.ndarray,
        pixel_values: np.ndarray,
        image_size: tuple[int, int],
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        stop_token_ids: Sequence[int] = (),
        timings: Timings | None = None,
        logits_out: list | None = None,
        decode_feeds_out: list | None = None,
        prefill_out: dict | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield ``(B,)`` token ids step by step. Rows that hit a stop token repeat it; all stop -> done.
        ``logits_out`` collects each step's logits, ``decode_feeds_out`` a copy of each decode call's feeds,
        ``prefill_out`` the image embeddings (``image_embeds``) and the prefill outputs."""
        sampling = sampling or SamplingConfig()
        timings = timings if timings is not None else Timings()
        rng = np.random.default_rng(sampling.seed)
        bucket = self.manifest.bucket_for(image_size)
        limit = self.manifest.profile["max_new_tokens"]
        if max_new_tokens > limit:
            critical(
                f"max_new_tokens={max_new_tokens} exceeds the export profile's {limit}; re-export with a larger "
                "--max-new-tokens."
            )
        began, sessions_before = time.perf_counter(), self.session_seconds()
        embeds = self.image_embeds(pixel_values, bucket)
        timings.vision_ms = (time.perf_counter() - began) * 1e3
        outputs = self.prefill(input_ids, embeds, bucket)
        timings.prefill_ms = (time.perf_counter() - began) * 1e3 - timings.vision_ms
        if prefill_out is not None:
            prefill_out.update(outputs, image_embeds=embeds)
        prompt = self.manifest.prompt
        batch, length = input_ids.shape
        presents = {k: v for k, v in outputs.items() if k.startswith("present.")}
        max_lengths = [
            presents[f"present.{layer}.key"].shape[2] + max_new_tokens for layer in range(prompt["num_layers"])
        ]
        dtype = presents["present.0.key"].dtype
        cache = KVCache(batch, prompt["num_key_value_heads"], prompt["head_dim"], max_lengths, dtype)
        cache.load(presents)
        timings.kv_cache_bytes = cache.nbytes()
        stops = np.asarray(list(stop_token_ids), dtype=np.int64)
        finished = np.zeros(batch, dtype=bool)
        logits = outputs["logits"]
        decode_began = None
        for step in range(max_new_tokens):
            if logits_out is not None:
                logits_out.append(logits)
            token = next_tokens(logits, sampling, rng)
            if stops.size:
                token = np.where(finished, stops[0], token)
                finished |= np.isin(token, stops)
            if step == 0:
                timings.first_token_ms = (time.perf_counter() - began) * 1e3
                decode_began = time.perf_counter()
            timings.new_tokens = step + 1
            yield token
            if step == max_new_tokens - 1 or (stops.size and finished.all()):
                break
            feeds = {
                "inputs_embeds": self.embed(token[:, None]),
                "position_ids": self.positions(bucket, batch, length + step, 1),
                **cache.past(),
            }
            if decode_feeds_out is not None:  # copies: the cache buffers are written in place by the next step
                decode_feeds_out.append({name: np.array(value) for name, value in feeds.items()})
            logits = self.session("decode").infer(feeds, targets=cache.present_targets())["logits"]
            cache.advance()
        if decode_began is not None:
            timings.decode_ms = (time.perf_counter() - decode_began) * 1e3
        timings.session_ms = (self.session_seconds() - sessions_before) * 1e3

    def greedy(
        self,
        input_ids: np.ndarray,
        pixel_values: np.ndarray,
        image_size: tuple[int, int],
        max_new_tokens: int,
        prefill_out: dict | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(B, max_new_tokens)`` greedy tokens and ``(B, steps, V)`` logits (no stop tokens); ``prefill_out`` as
        in ``generate_tokens``."""
        logits: list = []
        steps = self.generate_tokens(
            input_ids, pixel_values, image_size, max_new_tokens, logits_out=logits, prefill_out=prefill_out
        )
        tokens = list(steps)
        return np.stack(tokens, axis=1), np.stack(logits, axis=1)

    def _request(self, images, prompts):
        began = time.perf_counter()
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            critical(f"Got {len(images)} images but {len(prompts)} prompts; give one prompt per image.")
        pixel_values, image_size = self.preprocess(images)
        input_ids = self.prompt_ids(prompts, self.manifest.bucket_for(image_size))
        return input_ids, pixel_values, image_size, (time.perf_counter() - began) * 1e3

    def _stop_ids(self, stop_token_ids):
        if stop_token_ids is not None:
            return list(stop_token_ids)
        eos = self.manifest.prompt["eos_token_id"]
        return [eos] if isinstance(eos, int) else list(eos or [])

    def generate(
        self,
        images,
        prompts,
        max_new_tokens: int = 64,
        sampling: SamplingConfig | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> Generation:
        """Text for one prompt per image (a batch of same-size images)."""
        input_ids, pixel_values, image_size, preprocess_ms = self._request(images, prompts)
        timings = Timings(preprocess_ms=preprocess_ms)
        stops = self._stop_ids(stop_token_ids)
        steps = list(
            self.generate_tokens(input_ids, pixel_values, image_size, max_new_tokens, sampling, stops, timings)
        )
        tokens = np.stack(steps, axis=1)
        texts = [self.tokenizer.decode(row, skip_special_tokens=True) for row in tokens]
        return Generation(texts, tokens, timings)

    def stream(
        self,
        image,
        prompt: str,
        max_new_tokens: int = 64,
        sampling: SamplingConfig | None = None,
        stop_token_ids: Sequence[int] | None = None,
        timings: Timings | None = None,
    ) -> Iterator[str]:
        """Yield the text of one request piece by piece as tokens arrive; the pieces join to ``generate``'s text."""
        input_ids, pixel_values, image_size, preprocess_ms = self._request([image], [prompt])
        timings = timings if timings is not None else Timings()
        timings.preprocess_ms = preprocess_ms
        tokens, shown = [], ""
        for token in self.generate_tokens(
            input_ids, pixel_values, image_size, max_new_tokens, sampling, self._stop_ids(stop_token_ids), timings
        ):
            tokens.append(int(token[0]))
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if len(text) > len(shown) and not text.endswith("\ufffd"):  # wait for whole UTF-8 characters
                yield text[len(shown) :]
                shown = text
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if text != shown:
            yield text[len(shown) :]
