"""``Pipeline``: image (or video) + prompt -> text over the exported graphs (ONNX Runtime) or their engines (TensorRT).

Preprocessing is the model's own ``transformers`` image processor and tokenizer, saved in the export folder (a
video's frames go through the image processor one by one, ``luvc.videos``). The
host work between the graphs (README, "Artifacts"): image features overwrite the prompt's image span (static per
bucket) in the token embeddings; position ids come from the bucket's ``host_*.npz`` plus a running offset.

Everything between the graphs stays on the pipeline's device (``cpu`` or ``cuda:N``) as torch tensors: image and
prompt embeddings, logits, and the per-layer ``KVCache`` of fixed capacities that the decode graph updates in
place. A generation is a ``Request`` (its buffers, positions and sampling state) that yields one ``Step`` per
token; per decode step only the sampled token ids cross to the host (and the logits, when a request keeps them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from luvc.errors import critical
from luvc.export.manifest import BucketEntry, ExportManifest, GraphEntry, checked_graph_path
from luvc.models.prompt import PromptTemplate, token_runs, video_text
from luvc.processing import load_processor, tile_canvas
from luvc.runtime import BACKENDS
from luvc.runtime.fit import DEFAULT_FIT, BucketFitter, Fit, check_policy
from luvc.runtime.kv_cache import KVCache
from luvc.runtime.sampling import SamplingConfig, next_tokens
from luvc.runtime.session import TORCH_DTYPES, BaseSession, OrtSession, TransferStats, TrtSession, ort_providers
from luvc.runtime.text import TextStream
from luvc.runtime.weights import MappedWeights
from luvc.videos import (
    DEFAULT_SAMPLED_FPS,
    Video,
    qwen_videos_pixels,
    seconds_per_slice,
    slice_timestamps,
    video_time_positions,
)


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


@dataclasses.dataclass
class Prepared:
    """A batch ready for ``Pipeline.request``: prompt ids ``(B, S)`` in the export's template, the image processor's
    pixels, the processed image size (a video's ``(frames, H, W)``), its bucket's manifest entry, the preprocessing
    time, and for videos the seconds one temporal patch spans (``luvc.videos.seconds_per_slice``). A prompt with an
    image and a video (a mixed bucket) has a pair of pixel arrays and a pair of sizes."""

    input_ids: np.ndarray
    pixel_values: np.ndarray | tuple[np.ndarray, np.ndarray]
    image_size: tuple
    bucket: BucketEntry
    preprocess_ms: float = 0.0
    seconds_per_slice: float | None = None
    fits: tuple[Fit | None, ...] = ()  # per row, what fitting it to the bucket did (None: the exact policy)

    @property
    def fitted(self) -> bool:
        """Whether fitting changed any row's visual."""
        return any(fit is not None and fit.changed for fit in self.fits)

    @property
    def fit_change(self) -> str:
        """What fitting changed in the first row, in words (``""``: nothing)."""
        return self.fits[0].change if self.fits and self.fits[0] is not None else ""


@dataclasses.dataclass
class Step:
    """What one generation step produced: ``tokens (B,)`` on the host, which rows have stopped, and (when the
    request keeps them) the ``(B, V)`` logits the tokens were chosen from and the decode graph's feeds."""

    index: int
    tokens: np.ndarray
    finished: np.ndarray
    logits: np.ndarray | None = None
    decode_feeds: dict[str, np.ndarray] | None = None


def host_arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """NumPy copies of device tensors (for reports, calibration and parity, never in the decode loop)."""
    return {name: tensor.detach().to("cpu", copy=True).numpy() for name, tensor in tensors.items()}


def resolve_device(backend: str, providers: Sequence | None, device: str | None) -> torch.device:
    """The pipeline's device: as given; else CUDA for TensorRT or a CUDA execution provider, else the CPU."""
    if device is not None:
        try:
            resolved = torch.device(device)
        except RuntimeError:
            critical(f"Device {device!r} is not a torch device; use cpu or cuda:N (--device).")
        if resolved.type not in ("cpu", "cuda"):
            critical(f"Device {device!r} is not supported; use cpu or cuda:N (--device).")
        if resolved.type == "cuda" and not torch.cuda.is_available():
            critical(f"Device {device} needs CUDA, which this PyTorch does not see; use --device cpu.")
        if backend == "trt" and resolved.type != "cuda":
            critical("TensorRT engines run on a CUDA device; use --device cuda:N or --backend ort.")
        # tensors report cuda:N; a bare "cuda" would never compare equal to their device
        return torch.device("cuda", torch.cuda.current_device()) if resolved == torch.device("cuda") else resolved
    names = [p[0] if isinstance(p, tuple) else p for p in providers or ()]
    return torch.device("cuda", 0) if backend == "trt" or "CUDAExecutionProvider" in names else torch.device("cpu")


class Pipeline:
    """Generation over an export folder on one device. ``backend="trt"`` runs the engines of ``engines_dir`` (built
    from this export by ``luvc-export build``); ``providers`` overrides the ONNX Runtime execution providers that
    ``device`` implies (``cpu``: the CPU EP; ``cuda:N``: the CUDA EP of onnxruntime-gpu)."""

    def __init__(
        self,
        export_dir: str | Path,
        backend: str = "ort",
        engines_dir: str | Path | None = None,
        providers: list | None = None,
        verify: bool = True,
        device: str | None = None,
        plugin_library: str | Path | None = None,
        fit: str | None = None,
    ) -> None:
        self.fit_policy = check_policy(fit or DEFAULT_FIT)
        if backend not in BACKENDS:
            critical(f"Backend {backend!r} is not one of {list(BACKENDS)}.")
        self.folder = Path(export_dir)
        self.manifest = ExportManifest.load(self.folder, verify=verify)
        self.backend = backend
        self.engines_dir = None if engines_dir is None else Path(engines_dir)
        self.plugin_library = plugin_library
        if backend == "ort" and self.manifest.passes.plugin_nodes:
            critical(
                f"{self.folder} holds luvc plugin nodes, which ONNX Runtime cannot run; run its TensorRT engines "
                "(--backend trt --engines DIR) or re-export without --plugin-nodes."
            )
        if backend == "trt" and self.engines_dir is None:
            critical("--backend trt needs the engine folder built from this export: pass --engines ENGINE_DIR.")
        self.device = resolve_device(backend, providers, device)
        # without CUDA a TensorRT pipeline still opens (its engine checks run first); its sessions then refuse
        on_gpu = self.device.type == "cuda" and torch.cuda.is_available()
        self.cuda_stream = torch.cuda.Stream(self.device) if on_gpu else None
        self.providers = providers or ort_providers(self.device, self.cuda_stream and self.cuda_stream.cuda_stream)
        self.stats = TransferStats()  # the pipeline's own host <-> device copies (sessions count theirs)
        self._engines = self._checked_engines() if backend == "trt" else {}
        # ONNX Runtime on the CPU: one copy of the weights for all sessions (an fp16 export computes in float32 there)
        self.weights = None
        if backend == "ort" and self.device.type == "cpu":
            self.weights = MappedWeights(self.folder, float32=self.manifest.precision == "fp16")
        self._sessions: dict[str, BaseSession] = {}
        self._host: dict[str, dict[str, np.ndarray]] = {}
        self._caches: dict[int, KVCache] = {}
        self._tokenizer = self._processor = self._fitter = None

    # -- sessions and files ---------------------------------------------------------------------------------
    def session(self, name: str) -> BaseSession:
        """The session of graph ``name`` (created and activated on first use)."""
        if name not in self._sessions:
            graph = self.manifest.graphs[name]
            if self.backend == "ort":
                session = OrtSession(
                    checked_graph_path(self.folder, name, self.manifest),
                    graph.inputs,
                    graph.outputs,
                    self.providers,
                    basic_optimizations=self.manifest.precision == "fp8",
                    device=self.device,
                    weights=self.weights,
                )
            else:
                session = self._trt_session(name, graph)
            self._sessions[name] = session.activate()
        return self._sessions[name]

    def _checked_engines(self) -> dict[str, tuple]:
        """Every engine's bytes, TensorRT module and profile after the engine-manifest checks, up front: a truncated
        or foreign engine is named before anything runs."""
        from luvc.engines.builder import device_capability
        from luvc.engines.manifest import EngineManifest
        from luvc.engines.plugin_library import plugin_library_for_run
        from luvc.engines.trt_module import import_tensorrt

        engines = EngineManifest.load(self.engines_dir)
        tensorrt = import_tensorrt(engines.tensorrt.module)
        plugins = plugin_library_for_run(engines.plugin_library, self.plugin_library)
        checked = {}
        for name in self.manifest.graphs:
            engine = engines.check_engine(self.engines_dir, name, tensorrt, device_capability(), export=self.manifest)
            profile = {key: [list(s) for s in shapes] for key, shapes in engines.engines[name].profile.items()}
            checked[name] = (engine, tensorrt, profile)
        if plugins is not None:
            plugins.load(tensorrt)  # before any engine deserializes
        return checked

    def _trt_session(self, name: str, graph: GraphEntry) -> TrtSession:
        engine, tensorrt, profile = self._engines.pop(name)
        return TrtSession(
            engine, graph.inputs, graph.outputs, profile, tensorrt, f"trt:{name}", self.device, self.cuda_stream
        )

    def host(self, bucket: BucketEntry) -> dict[str, np.ndarray]:
        if bucket.host not in self._host:
            with np.load(self.folder / bucket.host) as data:
                self._host[bucket.host] = {key: data[key] for key in data.files}
        return self._host[bucket.host]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.folder / "tokenizer", local_files_only=True)
        return self._tokenizer

    @property
    def processor(self):
        if self._processor is None:
            self._processor = load_processor(self.folder)
        return self._processor

    @property
    def fitter(self) -> BucketFitter:
        """How visuals are fitted to this export's buckets under the pipeline's fit policy."""
        if self._fitter is None:
            self._fitter = BucketFitter.for_export(self.manifest, self.processor, self.fit_policy)
        return self._fitter

    def load(self, image_size: tuple[int, ...] | None = None) -> Pipeline:
        """Create the sessions a request of ``image_size`` (a video's ``(frames, H, W)``; default: every bucket)
        needs, so timings exclude it."""
        buckets = [self.manifest.bucket_for(image_size)] if image_size else list(self.manifest.buckets.values())
        for bucket in list(buckets):  # a mixed bucket runs its parts' vision graphs
            buckets += [self.manifest.buckets[part] for part in bucket.parts]
        for name in ("embed", "decode", *(graph for bucket in buckets for graph in (bucket.vision, bucket.prefill))):
            if name:
                self.session(name)
        return self

    def session_providers(self) -> list[str]:
        """The ONNX Runtime execution providers the open sessions really got (empty for TensorRT)."""
        return sorted({name for session in self._sessions.values() for name in getattr(session, "providers", [])})

    def session_seconds(self) -> float:
        return sum(session.total_inference_seconds for session in self._sessions.values())

    def transfer_stats(self) -> TransferStats:
        """Host <-> device bytes and allocations so far: the pipeline's own and every session's."""
        total = self.stats
        for session in self._sessions.values():
            total = total + session.stats
        return total

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """A host array on the pipeline's device (counted)."""
        self.stats.host_to_device_bytes += array.nbytes
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def to_host(self, tensor: torch.Tensor) -> np.ndarray:
        """A copy of a device tensor on the host (counted; waits for the device)."""
        self.stats.device_to_host_bytes += tensor.numel() * tensor.element_size()
        return tensor.detach().to("cpu", copy=True).numpy()

    def synchronize(self) -> None:
        """Wait for the pipeline's device work (only to time stages; the decode loop waits on token ids alone)."""
        if self.cuda_stream is not None:
            self.cuda_stream.synchronize()

    def kv_cache(self, batch: int) -> KVCache:
        """The fixed-capacity KV cache for ``batch`` rows, allocated on first use and reused by every request."""
        if batch not in self._caches:
            geometry, kv = self.manifest.geometry, self.manifest.kv_cache
            dtype = TORCH_DTYPES[self.manifest.graphs["decode"].input("past_key_values.0.key").dtype]
            # TensorRT's KV-cache update layer (tensor-scatter) writes in place; its ScatterElements output may not
            # share memory with the input, so that form alternates between two sets of buffers on TensorRT
            aliased = self.backend == "ort" or kv.update == "tensor-scatter"
            self._caches = {  # one batch size at a time: a new size frees the old buffers
                batch: KVCache(
                    batch,
                    geometry.num_key_value_heads,
                    geometry.head_dim,
                    kv.capacity,
                    dtype,
                    self.device,
                    aliased,
                )
            }
        return self._caches[batch]

    def release(self) -> None:
        """Close every session and free the KV caches (a later request opens what it needs again)."""
        for session in self._sessions.values():
            session.deactivate()
        self._sessions.clear()
        self._caches.clear()
        if self.weights is not None:
            self.weights.close()

    def kv_buffer_bytes(self) -> int:
        """Device bytes of the KV-cache buffers allocated now (what ``luvc-export plan`` counts per batch size)."""
        return sum(cache.capacity_bytes() for cache in self._caches.values())

    # -- stages ---------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image | Video]) -> tuple[np.ndarray, tuple[int, ...]]:
        """Pixels for the vision graph, exactly as the model's image processor makes them, and the bucket size (a
        video's: ``(frames, H, W)``)."""
        videos = sum(isinstance(image, Video) for image in images)
        if videos:
            return self._preprocess_videos(images, videos)
        pixels = self.processor(images=list(images), return_tensors="np")
        if "image_grid_thw" in pixels:
            grids = {tuple(grid) for grid in np.asarray(pixels["image_grid_thw"]).tolist()}
            if len(grids) > 1:
                critical(f"Images of one batch must share a size after preprocessing; got grids {sorted(grids)}.")
            _, height, width = grids.pop()
            patch = self.manifest.geometry.patch_size
            return np.asarray(pixels["pixel_values"]), (height * patch, width * patch)
        values = np.asarray(pixels["pixel_values"])
        if "num_patches" in pixels:  # InternVL: each image's tiles; its bucket is the canvas the tiles were cut from
            canvases = {tile_canvas((image.height, image.width), self.processor) for image in images}
            if len(canvases) > 1:
                critical(f"Images of one batch must share a tile layout; got canvases {sorted(canvases)}.")
            return values, canvases.pop()
        return values, tuple(values.shape[-2:])

    def _preprocess_videos(self, videos: Sequence[Video], count: int) -> tuple[np.ndarray, tuple[int, int, int]]:
        temporal = self.manifest.geometry.temporal_patch_size
        if count != len(videos):
            critical("A batch holds images or videos, not both; send the images and the videos as separate requests.")
        self._check_video_support()
        pixels, grids = qwen_videos_pixels(videos, self.processor, temporal)
        t, height, width = grids[0].tolist()
        patch = self.manifest.geometry.patch_size
        return pixels, (t * temporal, height * patch, width * patch)

    def _visual_text(self, bucket: BucketEntry, video: Video | None) -> str | None:
        """What takes the template's ``{image}`` when it is not the bucket's placeholder repeated (``None``): a
        mixed bucket's image and video, or a video whose timestamps the prompt holds (Qwen3-VL)."""
        entry = self.manifest.template
        if bucket.parts:
            image, clip = (self.manifest.buckets[part] for part in bucket.parts)
            text = self._visual_text(clip, video) or entry.video_placeholder * clip.tokens_per_image
            return entry.image_placeholder * image.tokens_per_image + entry.visual_separator + text
        if video is None or not entry.video_frame_template:
            return None
        temporal = self.manifest.geometry.temporal_patch_size
        seconds = slice_timestamps(video, temporal, len(bucket.visual_spans))
        return video_text(entry.video_placeholder, bucket.tokens_per_image, entry.video_frame_template, seconds)

    def seconds_per_slice(self, videos: Sequence[Video]) -> float | None:
        """The seconds one temporal patch of the batch's videos spans (``None`` for images); rows share it."""
        if not videos or not isinstance(videos[0], Video):
            return None
        seconds = {seconds_per_slice(video, self.manifest.geometry.temporal_patch_size) for video in videos}
        if len(seconds) > 1:
            critical(
                f"Videos of one batch must be sampled at one rate; got {sorted(seconds)} seconds per temporal patch "
                "(sample them with the same --video-fps)."
            )
        return seconds.pop()

    def vision_feeds(self, pixel_values: np.ndarray, bucket: BucketEntry) -> list[dict[str, torch.Tensor]]:
        """The feeds of the vision graph's calls for ``pixel_values``, on the device: one call for a
        ``(B, C, H, W)`` batch; one per image for Qwen-VL pixels ``(images * N, C)``, with the bucket's
        host-planned metadata."""
        inputs = self.manifest.graphs[bucket.vision].inputs
        pixels = self.to_device(pixel_values).to(TORCH_DTYPES[inputs[0].dtype])
        if len(inputs[0].shape) == 4:  # (B, C, H, W) with a dynamic batch
            return [{"pixel_values": pixels}]
        per_image = inputs[0].shape[0]
        if pixels.dim() != 2 or pixels.shape[0] % per_image:
            critical(
                f"{bucket.vision} takes {per_image} patches per image; got pixels of shape "
                f"{tuple(pixels.shape)}. Preprocess with the model's image processor."
            )
        host = self.host(bucket)
        metadata = {entry.name: self.to_device(host[entry.name]) for entry in inputs[1:]}
        return [{"pixel_values": chunk, **metadata} for chunk in torch.split(pixels, per_image)]

    def image_features(self, pixel_values, bucket: BucketEntry) -> dict[str, torch.Tensor]:
        """The vision graph's outputs for ``pixel_values`` on the device, images along axis 0: ``image_embeds
        (images, n, D)`` and (Qwen3-VL) the DeepStack planes ``deepstack.{k}`` of the same shape. A mixed bucket
        takes a pair (image, video) and runs its parts' graphs."""
        if bucket.parts:  # a mixed bucket: its image's features, then its video's, along the token axis
            parts = [
                self.image_features(pixels, self.manifest.buckets[part])
                for pixels, part in zip(pixel_values, bucket.parts)
            ]
            return {name: torch.cat([part[name] for part in parts], dim=1) for name in parts[0]}
        session = self.session(bucket.vision)
        calls = [session.infer(feeds) for feeds in self.vision_feeds(pixel_values, bucket)]
        if len(calls) == 1:
            return calls[0]
        return {name: torch.cat([outputs[name] for outputs in calls]) for name in calls[0]}

    def embed(self, input_ids: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings of device ``input_ids (B, S)``, into ``out`` when given."""
        targets = None if out is None else {"inputs_embeds": out}
        return self.session("embed").infer({"input_ids": input_ids}, targets)["inputs_embeds"]

    def positions(
        self, bucket: BucketEntry, batch: int, start: int, length: int, seconds_per_slice: float | None = None
    ) -> np.ndarray:
        """Position ids of ``length`` tokens from prompt index ``start``: ``(3, B, S)`` M-RoPE or ``(B, S)``. A video
        bucket whose time positions follow the frame rate (Qwen2.5-VL) takes its videos' ``seconds_per_slice``
        (``None``: the processors' default rate)."""
        host = self.host(bucket)
        prompt = host["prompt_position_ids"]
        if "video_time_slices" in host:
            seconds = seconds_per_slice or self.manifest.geometry.temporal_patch_size / DEFAULT_SAMPLED_FPS
            prompt = prompt.copy()
            start_index = int(host["video_time_start"]) if "video_time_start" in host else bucket.visual_start
            slices = host["video_time_slices"]
            time = video_time_positions(int(prompt[0, start_index]), slices, float(host["video_time_scale"]), seconds)
            prompt[0, start_index : start_index + len(slices)] = time
        text_offset = int(host["next_position"]) - prompt.shape[1]  # text positions minus their index
        index = np.arange(start, start + length)
        rows = np.where(index < prompt.shape[1], prompt[:, np.minimum(index, prompt.shape[1] - 1)], index + text_offset)
        rows = np.broadcast_to(rows[:, None, :], (rows.shape[0], batch, length)).astype(np.int64)
        return rows if rows.shape[0] == 3 else rows[0]

    def prefill_feeds(
        self,
        input_ids: np.ndarray,
        features: dict[str, torch.Tensor],
        bucket: BucketEntry,
        seconds_per_slice: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Prefill feeds for prompts ``input_ids (B, S)`` and their images' (or videos') ``features``
        (``image_features``): the visual span takes ``image_embeds (B, n, D)``; the features the prefill graph also
        takes (DeepStack planes) are fed as they are. ``seconds_per_slice``: see ``positions``."""
        batch, length = input_ids.shape
        template = self.manifest.template
        tokens = [template.placeholder_of(bucket)[1], *([template.image_token_id] if bucket.parts else [])]
        spans = bucket.visual_spans
        if length < bucket.visual_end + bucket.min_text_tokens or any(
            not np.isin(input_ids[:, start : start + count], tokens).all() for start, count in spans
        ):
            kind = "image and video" if bucket.parts else "video" if bucket.frames else "image"
            critical(
                f"Prompts must hold {bucket.tokens_per_image} {kind} tokens ("
                f"{', '.join(f'{count} at index {start}' for start, count in spans)}), followed by the text (the "
                "export's prompt template); build them with prompt_ids() for the same bucket."
            )
        embeds = self.embed(self.to_device(input_ids.astype(np.int64)))
        rows = features["image_embeds"].to(embeds.dtype)
        offset = 0
        for start, count in spans:
            embeds[:, start : start + count] = rows[:, offset : offset + count]
            offset += count
        positions = self.positions(bucket, batch, 0, length, seconds_per_slice)
        feeds = {"inputs_embeds": embeds, "position_ids": self.to_device(positions)}
        for entry in self.manifest.graphs[bucket.prefill].inputs:
            if entry.name in features:
                feeds[entry.name] = features[entry.name]
        return feeds

    def prefill(
        self,
        input_ids: np.ndarray,
        features: dict[str, torch.Tensor],
        bucket: BucketEntry,
        seconds_per_slice: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Prefill outputs (last-token logits, every layer's KV, kept visual indices) for ``prefill_feeds``."""
        feeds = self.prefill_feeds(input_ids, features, bucket, seconds_per_slice)
        return self.session(bucket.prefill).infer(feeds)

    def prompt_ids(self, prompts: Sequence[str], bucket: BucketEntry, videos: Sequence[Video] = ()) -> np.ndarray:
        """Token ids of the export's prompt template around each prompt (a prompt that holds the image placeholder is
        taken as already templated); rows must tokenize to one length. ``videos``: each row's clip, for a bucket
        whose prompt holds the clip's timestamps (Qwen3-VL)."""
        entry = self.manifest.template
        template = PromptTemplate(entry.text, entry.image_placeholder, entry.bos)
        placeholder, token = entry.placeholder_of(bucket)
        texts = [
            template.render(text, bucket.tokens_per_image, placeholder, self._visual_text(bucket, video))
            for text, video in itertools.zip_longest(prompts, videos[: len(prompts)])
        ]
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if len({len(row) for row in rows}) > 1:
            critical("Batched prompts tokenize to different lengths; batch rows need prompts of equal length.")
        if bucket.parts:
            spans = tuple(sorted(token_runs(rows[0], entry.image_token_id) + token_runs(rows[0], token)))
            if spans != bucket.visual_spans:
                critical(
                    f"The prompt's image and video tokens do not sit where bucket {bucket.name} has them; write the "
                    "prompt without placeholders (the template adds them)."
                )
        elif entry.video_frame_template and bucket.frames and token_runs(rows[0], token) != bucket.visual_spans:
            seconds = slice_timestamps(videos[0], self.manifest.geometry.temporal_patch_size, len(bucket.visual_spans))
            critical(
                f"The clip's slice timestamps ({', '.join(f'{s:.1f}' for s in seconds)} s) take other token counts in "
                f"the prompt than bucket {bucket.name}'s, which was traced with a clip from 0 s at "
                f"{DEFAULT_SAMPLED_FPS:g} frames a second (this family writes each slice's time into the prompt); "
                "sample the clip so its timestamps have as many digits (e.g. --video-fps 2 on a clip under 10 s)."
            )
        text_tokens = len(rows[0]) - bucket.visual_end
        limit = self.manifest.profile.max_text_tokens
        if text_tokens > limit:
            critical(
                f"The prompt has {text_tokens} text tokens after the image but the export profile allows "
                f"{limit}; shorten it or re-export with --max-text-tokens {text_tokens}."
            )
        return np.asarray(rows, dtype=np.int64)

    # -- generation -----------------------------------------------------------------------------------------
    def request(
        self,
        input_ids: np.ndarray,
        pixel_values: np.ndarray | tuple[np.ndarray, np.ndarray],
        image_size: tuple,
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        stop_token_ids: Sequence[int] = (),
        timings: Timings | None = None,
        keep_logits: bool = False,
        keep_decode_feeds: bool = False,
        seconds_per_slice: float | None = None,
    ) -> Request:
        """A generation of up to ``max_new_tokens`` tokens for prompts ``input_ids (B, S)`` and their images (or
        videos: ``image_size`` is ``(frames, H, W)``, ``seconds_per_slice`` their rate); iterate it for ``Step``s."""
        self.check_max_new_tokens(max_new_tokens)
        return Request(
            self,
            input_ids,
            pixel_values,
            image_size,
            max_new_tokens,
            sampling or SamplingConfig(),
            stop_token_ids,
            timings if timings is not None else Timings(),
            keep_logits,
            keep_decode_feeds,
            seconds_per_slice,
        )

    def request_for(
        self,
        prepared: Prepared,
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        stop_token_ids: Sequence[int] = (),
        timings: Timings | None = None,
        keep_logits: bool = False,
        keep_decode_feeds: bool = False,
    ) -> Request:
        """``request`` for a ``Prepared`` batch."""
        return self.request(
            prepared.input_ids,
            prepared.pixel_values,
            prepared.image_size,
            max_new_tokens,
            sampling,
            stop_token_ids,
            timings,
            keep_logits,
            keep_decode_feeds,
            prepared.seconds_per_slice,
        )

    def greedy(
        self,
        input_ids: np.ndarray,
        pixel_values: np.ndarray | tuple[np.ndarray, np.ndarray],
        image_size: tuple,
        max_new_tokens: int,
        seconds_per_slice: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Request]:
        """``(B, max_new_tokens)`` greedy tokens, ``(B, steps, V)`` logits (no stop tokens), and the finished
        request (its image embeddings and prefill outputs)."""
        request = self.request(
            input_ids, pixel_values, image_size, max_new_tokens, keep_logits=True, seconds_per_slice=seconds_per_slice
        )
        steps = list(request)
        return np.stack([s.tokens for s in steps], axis=1), np.stack([s.logits for s in steps], axis=1), request

    def fit(self, visual):
        """``visual`` (an image, a ``Video`` or an (image, video) pair) fitted to one of the export's buckets under the
        pipeline's fit policy (``luvc.runtime.fit``), and what was done (``None``: the ``exact`` policy)."""
        if isinstance(visual, Video) or isinstance(visual, tuple) and any(isinstance(v, Video) for v in visual):
            self._check_video_support()
        return self.fitter(visual)

    def _check_video_support(self) -> None:
        if self.manifest.geometry.temporal_patch_size is None or self.manifest.template.video_token_id is None:
            critical(f"{self.manifest.model.id} was exported without video support; send images to this export.")

    def prepare(self, images, prompts) -> Prepared:
        """Fit one image (or ``Video``) per prompt to a bucket (``fit``), preprocess them (a batch lands in one bucket;
        a single image and prompt are a batch of one) and build the prompt ids in the export's template; errors name
        what does not fit the export."""
        began = time.perf_counter()
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if any(isinstance(image, (list, tuple)) for image in images):
            return self._prepare_mixed(images, prompts, began)
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            critical(f"Got {len(images)} images but {len(prompts)} prompts; give one prompt per image.")
        images, fits = self._fitted(images)
        pixel_values, image_size = self.preprocess(images)
        bucket = self.manifest.bucket_for(image_size)
        input_ids = self.prompt_ids(prompts, bucket, [image for image in images if isinstance(image, Video)])
        elapsed = (time.perf_counter() - began) * 1e3
        return Prepared(input_ids, pixel_values, image_size, bucket, elapsed, self.seconds_per_slice(images), fits)

    def _fitted(self, visuals: Sequence) -> tuple[list, tuple[Fit | None, ...]]:
        """``visuals`` fitted (``fit``); the rows of one batch must land in one bucket."""
        pairs = [self.fit(visual) for visual in visuals]
        buckets = {fit.bucket for _, fit in pairs if fit is not None}
        if len(buckets) > 1:
            critical(f"The rows of one batch fit different buckets {sorted(buckets)}; send them as separate requests.")
        return [visual for visual, _ in pairs], tuple(fit for _, fit in pairs)

    def _prepare_mixed(self, rows: Sequence, prompts, began: float) -> Prepared:
        """One prompt with an image, then a video: a mixed bucket (``--mixed-size``) of the export."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        kinds = [isinstance(visual, Video) for visual in rows[0]]
        if len(rows) != 1 or len(prompts) != 1 or kinds != [False, True]:
            critical(
                "An export takes one image or one video per prompt, or one prompt with one image and then one video "
                "(a mixed bucket, --mixed-size); send such a prompt alone."
            )
        (pair,), fits = self._fitted([tuple(rows[0])])
        image, video = pair
        (image_pixels, image_size), (video_pixels, video_size) = self.preprocess([image]), self.preprocess([video])
        bucket = self.manifest.bucket_for((image_size, video_size))
        input_ids = self.prompt_ids(prompts, bucket, [video])
        elapsed = (time.perf_counter() - began) * 1e3
        seconds = self.seconds_per_slice([video])
        sizes = (image_size, video_size)
        return Prepared(input_ids, (image_pixels, video_pixels), sizes, bucket, elapsed, seconds, fits)

    def check_max_new_tokens(self, max_new_tokens: int) -> None:
        """Refuse a generation length outside 1 .. the export profile's ``max_new_tokens``."""
        self.manifest.profile.check_max_new_tokens(max_new_tokens)

    def stop_token_ids(self, stop_token_ids: Sequence[int] | None = None) -> list[int]:
        """``stop_token_ids`` as given, else the model's end-of-sequence ids from the manifest."""
        if stop_token_ids is not None:
            return list(stop_token_ids)
        eos = self.manifest.template.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    def generate(
        self,
        images,
        prompts,
        max_new_tokens: int = 64,
        sampling: SamplingConfig | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> Generation:
        """Text for one prompt per image (a batch of images that fit one bucket)."""
        return self.generate_prepared(self.prepare(images, prompts), max_new_tokens, sampling, stop_token_ids)

    def generate_prepared(
        self,
        prepared: Prepared,
        max_new_tokens: int = 64,
        sampling: SamplingConfig | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> Generation:
        """``generate`` for a request ``prepare`` made."""
        timings = Timings(preprocess_ms=prepared.preprocess_ms)
        stops = self.stop_token_ids(stop_token_ids)
        request = self.request_for(prepared, max_new_tokens, sampling, stops, timings)
        tokens = np.stack([step.tokens for step in request], axis=1)
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
        yield from self.stream_prepared(
            self.prepare([image], [prompt]), max_new_tokens, sampling, stop_token_ids, timings
        )

    def stream_prepared(
        self,
        prepared: Prepared,
        max_new_tokens: int = 64,
        sampling: SamplingConfig | None = None,
        stop_token_ids: Sequence[int] | None = None,
        timings: Timings | None = None,
    ) -> Iterator[str]:
        """``stream`` for a request of one row that ``prepare`` made."""
        timings = timings if timings is not None else Timings()
        timings.preprocess_ms = prepared.preprocess_ms
        stops = self.stop_token_ids(stop_token_ids)
        text = TextStream(self.tokenizer)
        request = self.request_for(prepared, max_new_tokens, sampling, stops, timings)
        for step in request:
            if piece := text.add(step.tokens[0]):
                yield piece
        if piece := text.flush():
            yield piece


class Request:
    """One generation over a batch of same-size images, created by ``Pipeline.request``.

    It holds its device buffers (image embeddings, prefill outputs, the token ids, the step's embeddings and
    logits, the positions) and its sampling state, and uses the pipeline's KV cache. Iterating runs the vision and
    prefill graphs for the first ``Step``, then one decode step per further token, until ``max_new_tokens`` or every
    row has produced a stop token (rows that stopped repeat their stop token)."""

    def __init__(
        self,
        pipeline: Pipeline,
        input_ids: np.ndarray,
        pixel_values: np.ndarray | tuple[np.ndarray, np.ndarray],
        image_size: tuple,
        max_new_tokens: int,
        sampling: SamplingConfig,
        stop_token_ids: Sequence[int],
        timings: Timings,
        keep_logits: bool,
        keep_decode_feeds: bool,
        seconds_per_slice: float | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.input_ids = input_ids
        self.pixel_values = pixel_values
        self.bucket = pipeline.manifest.bucket_for(image_size)
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.timings = timings
        self.keep_logits = keep_logits
        self.keep_decode_feeds = keep_decode_feeds
        self.seconds_per_slice = seconds_per_slice
        self.stop_token_ids = list(stop_token_ids)
        self.image_features: dict[str, torch.Tensor] = {}
        self.prefill_feeds: dict[str, torch.Tensor] = {}
        self.prefill_outputs: dict[str, torch.Tensor] = {}
        self.steps_done = 0
        self.done = False
        self._began = self._decode_began = self._sessions_before = 0.0

    def __iter__(self) -> Iterator[Step]:
        while not self.done:
            yield self.step()

    def step(self) -> Step:
        """The next token: the first runs vision and prefill, each further one a decode step."""
        if self.done:
            critical("This request has finished; start a new one with Pipeline.request().")
        step = self._start() if self.steps_done == 0 else self._decode()
        self.steps_done += 1
        self.timings.new_tokens = self.steps_done
        self.done = self.steps_done == self.max_new_tokens or bool(self.stop_token_ids and step.finished.all())
        now = time.perf_counter()
        if self.steps_done == 1:
            self.timings.first_token_ms = (now - self._began) * 1e3
            self._decode_began = now
        self.timings.decode_ms = (now - self._decode_began) * 1e3
        self.timings.session_ms = (self.pipeline.session_seconds() - self._sessions_before) * 1e3
        return step

    def _start(self) -> Step:
        pipeline, bucket, timings = self.pipeline, self.bucket, self.timings
        self._began, self._sessions_before = time.perf_counter(), pipeline.session_seconds()
        with _on_stream(pipeline.cuda_stream):
            self.image_features = pipeline.image_features(self.pixel_values, bucket)
            pipeline.synchronize()
            timings.vision_ms = (time.perf_counter() - self._began) * 1e3
            self.prefill_feeds = pipeline.prefill_feeds(
                self.input_ids, self.image_features, bucket, self.seconds_per_slice
            )
            self.prefill_outputs = pipeline.session(bucket.prefill).infer(self.prefill_feeds)
            pipeline.synchronize()
            timings.prefill_ms = (time.perf_counter() - self._began) * 1e3 - timings.vision_ms
            batch, length = self.input_ids.shape
            self.cache = pipeline.kv_cache(batch)
            self.cache.owner = self  # one request at a time uses a pipeline's cache
            self.cache.load(self.prefill_outputs)
            timings.kv_cache_bytes = self.cache.nbytes()
            device, hidden = pipeline.device, pipeline.manifest.geometry.hidden_size
            self.position = pipeline.to_device(pipeline.positions(bucket, batch, length, 1))
            self.token = torch.empty(batch, dtype=torch.int64, device=device)
            self.embeds = torch.empty(batch, 1, hidden, dtype=self.prefill_feeds["inputs_embeds"].dtype, device=device)
            self.logits = torch.empty_like(self.prefill_outputs["logits"])
            self.generator = self.sampling.generator(device)
            self.stops = torch.tensor(self.stop_token_ids or [-1], dtype=torch.int64).to(device)
            self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
            self.hit = torch.zeros(batch, dtype=torch.bool, device=device)
            return self._choose(self.prefill_outputs["logits"], None)

    def _decode(self) -> Step:
        pipeline, cache = self.pipeline, self.cache
        if cache.owner is not self:
            critical(
                "Another request on this pipeline has taken its KV cache since this one started; finish one request "
                "before starting the next, or give each concurrent request its own Pipeline."
            )
        cache.check_room()
        with _on_stream(pipeline.cuda_stream):
            pipeline.embed(self.token[:, None], out=self.embeds)
            feeds = {"inputs_embeds": self.embeds, "position_ids": self.position, **cache.inputs()}
            recorded = host_arrays(feeds) if self.keep_decode_feeds else None
            pipeline.session("decode").infer(feeds, targets={"logits": self.logits, **cache.targets()})
            cache.advance()
            self.position += 1
            return self._choose(self.logits, recorded)

    def _choose(self, logits: torch.Tensor, decode_feeds: dict | None) -> Step:
        """Sample the next tokens on the device; rows that stopped repeat their stop token."""
        token = next_tokens(logits, self.sampling, self.generator, self.token)
        if self.stop_token_ids:
            token.masked_fill_(self.finished, self.stop_token_ids[0])
            self.finished |= torch.isin(token, self.stops, out=self.hit)
        tokens = self.pipeline.to_host(token)  # the one copy to the host per step
        finished = np.isin(tokens, self.stop_token_ids)  # a stopped row repeats a stop token
        kept = self.pipeline.to_host(logits) if self.keep_logits else None
        return Step(self.steps_done, tokens, finished, kept, decode_feeds)


def _on_stream(stream):
    """Run torch work on the pipeline's CUDA stream (no-op on the CPU)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
