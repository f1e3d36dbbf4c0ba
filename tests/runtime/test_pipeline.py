"""The ONNX Runtime pipeline against PyTorch LUVC: preprocessing, greedy tokens, streaming, KV bytes, sampling."""

import numpy as np
import pytest
import torch

from luvc.errors import LuvcError
from luvc.export.exporter import export_model
from luvc.export.manifest import ExportManifest
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.generation import greedy_generate
from luvc.parity import metrics
from luvc.parity.tolerances import tolerances_for
from luvc.runtime.pipeline import GenerationOptions, Pipeline
from luvc.runtime.pixels import BytePixels
from luvc.runtime.sampling import SamplingConfig
from luvc.videos import synthetic_video
from tests import generation_cases as shared
from tests.conftest import EXPORT_MATRIX, VIDEO_BUCKETS, VIDEO_FAMILIES, VIDEO_LUVC

PROMPT = "What is in this picture?"
FP16_TOKEN_AGREEMENT = tolerances_for("fp16").token_agreement  # docs/parity.md: fp16 graphs vs fp32 PyTorch


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("family", EXPORT_MATRIX)
def test_greedy_text_equals_pytorch_luvc(family, batch, exports):
    adapter = load_model(family)
    adapter.apply_luvc()
    images = [synthetic_image(224, 224, seed) for seed in (7, 8)[:batch]]
    inputs = adapter.prepare_inputs(images, PROMPT)
    eos = adapter.tokenizer.eos_token_id
    with torch.no_grad():
        expected = greedy_generate(adapter.model, inputs, 16, eos_token_id=eos).numpy()
    pipeline = Pipeline(exports(family))
    pixels, size = pipeline.preparer.preprocess(images)
    np.testing.assert_array_equal(pixels, adapter.preprocess_images(images)["pixel_values"].numpy())
    generation = pipeline.generate(images, PROMPT, GenerationOptions(16))
    np.testing.assert_array_equal(generation.tokens, expected)
    assert generation.texts == [adapter.tokenizer.decode(row, skip_special_tokens=True) for row in expected]


def _greedy_equals_pytorch(adapter, pipeline: Pipeline, visuals: list, prompts: list[str]):
    """Greedy tokens and prefill position ids of ``pipeline`` equal PyTorch LUVC's for ``visuals`` (one per prompt);
    returns the prepared batch."""
    inputs = adapter.prepare_inputs(visuals, prompts)
    with torch.no_grad():
        expected = greedy_generate(adapter.model, inputs, 12, eos_token_id=adapter.tokenizer.eos_token_id).numpy()
    prepared = pipeline.prepare(visuals, prompts)
    np.testing.assert_array_equal(prepared.input_ids, inputs["input_ids"].numpy())
    tokens, _, request = pipeline.greedy(prepared, 12)
    np.testing.assert_array_equal(tokens, expected)
    positions = adapter.prompt_position_ids(inputs, adapter.plan(inputs))
    np.testing.assert_array_equal(request.prefill_feeds["position_ids"].numpy(), positions.numpy())
    return prepared, inputs


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_greedy_tokens_and_positions_equal_pytorch_luvc(family, video_exports):
    # clips sampled at 6 frames a second (the bucket was traced at 2): Qwen2.5-VL's time positions move with the
    # rate, Qwen3-VL's timestamps in the prompt too
    adapter = load_model(family)
    adapter.apply_luvc(VIDEO_LUVC)
    bucket = VIDEO_BUCKETS[family]
    clips = [synthetic_video(*bucket, seed=seed, fps=6.0) for seed in (3, 4)]
    prepared, inputs = _greedy_equals_pytorch(adapter, Pipeline(video_exports(family)), clips, [PROMPT, PROMPT])
    assert prepared.bucket.name == "x".join(map(str, bucket)) and prepared.bucket.frames == 8
    assert len(prepared.bucket.visual_spans) == (2 if family == "tiny-qwen3-vl" else 1)  # Qwen3: a span a slice
    np.testing.assert_array_equal(prepared.pixels[0], inputs["pixel_values_videos"].numpy())


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_an_image_and_a_video_in_one_prompt_equal_pytorch_luvc(family, video_exports):
    # the mixed bucket runs the image bucket's and the video bucket's vision graphs, then its own prefill graph
    adapter = load_model(family)
    adapter.apply_luvc(VIDEO_LUVC)
    pair = (synthetic_image(224, 224, 5), synthetic_video(*VIDEO_BUCKETS[family], seed=3, fps=6.0))
    prepared, _ = _greedy_equals_pytorch(adapter, Pipeline(video_exports(family)), [pair], [PROMPT])
    assert prepared.bucket.parts == ("224x224", "x".join(map(str, VIDEO_BUCKETS[family])))


def test_a_video_outside_the_buckets_names_them(video_exports, exports):
    pipeline = Pipeline(video_exports("tiny-qwen2-vl"), fit="exact")
    with pytest.raises(
        LuvcError,
        match=r"video \(frames x height x width\) 12x112x168 is outside .*8x112x168.*"
        r"--video-size 12x112x168",
    ):
        pipeline.prepare([synthetic_video(12, 112, 168)], PROMPT)
    with pytest.raises(LuvcError, match="images or videos, not both"):
        pipeline.prepare([synthetic_video(8, 112, 168), synthetic_image(224, 224)], [PROMPT, PROMPT])
    with pytest.raises(LuvcError, match=r"image and video 336x336\+8x112x168 is outside .*--mixed-size 336x336"):
        pipeline.prepare([(synthetic_image(336, 336), synthetic_video(8, 112, 168))], PROMPT)
    with pytest.raises(LuvcError, match="one prompt with one image and then one video"):
        pipeline.prepare([(synthetic_video(8, 112, 168), synthetic_image(224, 224))], PROMPT)
    for fit in ("exact", "nearest"):
        with pytest.raises(LuvcError, match="was exported without video support"):
            Pipeline(exports("tiny-llava"), fit=fit).prepare([synthetic_video(8, 112, 168)], PROMPT)
    # Qwen3-VL: a clip whose timestamps reach 10 s takes more prompt tokens than the bucket's (traced from 0 s)
    qwen3 = Pipeline(video_exports("tiny-qwen3-vl"), fit="exact")
    with pytest.raises(LuvcError, match=r"timestamps \(3.0, 11.0 s\) take other token counts .* under 10 s"):
        qwen3.prepare([synthetic_video(8, 128, 192, fps=0.5)], PROMPT)


def test_stream_yields_the_generated_text(exports):
    pipeline = Pipeline(exports("tiny-qwen2.5-vl"))
    image = synthetic_image(224, 224, 4)
    pieces = list(pipeline.stream(image, PROMPT, GenerationOptions(16)))
    assert len(pieces) > 1
    assert "".join(pieces) == pipeline.generate(image, PROMPT, GenerationOptions(16)).texts[0]


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-llava"])
def test_reported_kv_bytes_equal_the_cost_model(family, exports):
    adapter = load_model(family)
    adapter.apply_luvc()
    image = synthetic_image(224, 224, 2)
    inputs = adapter.prepare_inputs([image], PROMPT)
    generation = Pipeline(exports(family)).generate(image, PROMPT, GenerationOptions(2))
    assert generation.timings.kv_cache_bytes == adapter.cost(inputs, kv_bytes_per_element=4).kv_cache_bytes
    assert generation.timings.kv_cache_bytes < adapter.cost(inputs, kv_bytes_per_element=4).kv_cache_bytes_baseline


def test_sampling_is_seeded_and_top_k_one_is_greedy(exports):
    pipeline = Pipeline(exports("tiny-llava"))
    image = synthetic_image(224, 224, 6)
    greedy = pipeline.generate(image, PROMPT, GenerationOptions(8)).tokens
    assert np.array_equal(
        pipeline.generate(image, PROMPT, GenerationOptions(8, SamplingConfig(1.0, top_k=1, seed=1))).tokens, greedy
    )
    sampled = [
        pipeline.generate(image, PROMPT, GenerationOptions(8, SamplingConfig(1.5, top_p=0.95, seed=5))).tokens
        for _ in range(2)
    ]
    assert np.array_equal(*sampled) and not np.array_equal(sampled[0], greedy)


def test_penalties_on_the_device_equal_the_penalised_argmax_of_each_steps_logits(exports):
    """Greedy with presence and frequency penalties: every token is the argmax of that step's logits minus the
    penalties of what its own row generated before (counted here on the host), and the answer differs from plain
    greedy (the tiny model repeats a token, which the penalties forbid)."""
    pipeline = Pipeline(exports("tiny-qwen2-vl"))
    prepared = pipeline.prepare([synthetic_image(224, 224, 3), synthetic_image(224, 224, 8)], [PROMPT, PROMPT])
    sampling = SamplingConfig(presence_penalty=1.5, frequency_penalty=0.5)
    steps = list(pipeline.request(prepared, GenerationOptions(12, sampling, stop_token_ids=(), keep_logits=True)))
    counts = np.zeros_like(steps[0].logits, dtype=np.float64)
    for step in steps:
        penalised = step.logits - 0.5 * counts - 1.5 * (counts > 0)
        assert step.tokens.tolist() == penalised.argmax(-1).tolist(), step.index
        counts[np.arange(len(step.tokens)), step.tokens] += 1
    tokens = np.stack([step.tokens for step in steps], axis=1)
    plain = pipeline.generate(prepared, options=GenerationOptions(12, stop_token_ids=())).tokens
    assert not np.array_equal(tokens, plain)
    assert max(np.bincount(row).max() for row in plain) > 2  # what the penalties change


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-internvl"])
def test_device_preprocessing_uploads_bytes_and_generates_what_the_processor_does(family, exports):
    images = [synthetic_image(224, 224, seed) for seed in (1, 2)]
    runs = {}
    for preprocessing in ("device", "processor"):
        pipeline = Pipeline(exports(family), preprocessing=preprocessing)
        prepared = pipeline.prepare(images, [PROMPT] * 2)
        request = pipeline.request(prepared, GenerationOptions(8))
        before = pipeline.sessions.transfer_stats()
        tokens = [request.step().tokens]  # vision + prefill
        uploaded = pipeline.sessions.transfer_stats().since(before).host_to_device_bytes
        tokens += [step.tokens for step in request]
        runs[preprocessing] = prepared, uploaded, np.stack(tokens, axis=1)
    (fast, fast_bytes, fast_tokens), (reference, reference_bytes, reference_tokens) = runs.values()
    assert isinstance(fast.pixels[0], BytePixels) and isinstance(reference.pixels[0], np.ndarray)
    np.testing.assert_array_equal(np.asarray(fast.pixels[0]), reference.pixels[0])
    np.testing.assert_array_equal(fast_tokens, reference_tokens)
    # the pixels go up as bytes: float32 values are four bytes each (Qwen-VL's two frames of a patch: eight)
    saved = reference.pixels[0].nbytes - fast.pixels[0].nbytes
    recipe_bytes = 4 + 2 * 3 * 4  # the divisor, and each channel's mean and deviation (float32)
    assert reference_bytes - fast_bytes == saved - recipe_bytes > reference.pixels[0].nbytes // 2


def test_a_decode_step_moves_only_token_ids_and_allocates_nothing(exports):
    pipeline = Pipeline(exports("tiny-qwen2-vl"))
    images = [synthetic_image(224, 224, seed) for seed in (1, 2)]
    prepared = pipeline.prepare(images, [PROMPT] * 2)
    request = pipeline.request(prepared, GenerationOptions(6))
    request.step()  # vision + prefill: uploads pixels and the prompt once
    cache = request.cache
    addresses = [t.data_ptr() for pair in cache.buffers for t in pair]
    for _ in range(5):
        before, lengths = pipeline.sessions.transfer_stats(), list(cache.lengths)
        request.step()
        moved = pipeline.sessions.transfer_stats().since(before)
        assert moved.host_to_device_bytes == 0 and moved.allocations == 0
        assert moved.device_to_host_bytes == 2 * 8  # the two sampled token ids
        assert moved.calls == 2  # embed and decode
        assert cache.lengths == [length + 1 for length in lengths]
    assert [t.data_ptr() for pair in cache.buffers for t in pair] == addresses
    assert request.done


def _fill_capacity_export(family, kv_update, tmp_path):
    """An export whose profile admits exactly the test prompt's text and six new tokens, and PyTorch's tokens."""
    adapter = load_model(family)
    adapter.apply_luvc()
    image = synthetic_image(224, 224, 5)
    inputs = adapter.prepare_inputs([image], PROMPT)
    ids = inputs["input_ids"][0].tolist()
    start = ids.index(adapter.image_token_id)
    text_tokens = len(ids) - start - ids.count(adapter.image_token_id)
    with torch.no_grad():
        expected = greedy_generate(adapter.model, inputs, 6).numpy()
    profile = ExportProfile(
        image_sizes=((224, 224),), max_text_tokens=text_tokens, max_new_tokens=6, kv_update=kv_update
    )
    folder = export_model(load_model(family), tmp_path / family, profile, show_progress=False)
    return folder, image, expected


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "kv_update"), [("tiny-qwen2.5-vl", "tensor-scatter"), ("tiny-llava", "scatter-elements")]
)
def test_a_generation_that_fills_every_layer_exactly_equals_pytorch(family, kv_update, tmp_path):
    folder, image, expected = _fill_capacity_export(family, kv_update, tmp_path)
    pipeline = Pipeline(folder)
    assert pipeline.manifest.kv_cache.update == kv_update
    prepared = pipeline.prepare([image], [PROMPT])
    request = pipeline.request(prepared, GenerationOptions(6, stop_token_ids=()))
    tokens = np.stack([step.tokens for step in request], axis=1)
    np.testing.assert_array_equal(tokens, expected)
    assert request.cache.lengths == list(pipeline.manifest.kv_cache.capacity)  # every layer full
    with pytest.raises(LuvcError, match="KV cache of layer 0 is full"):
        request.cache.check_room()
    with pytest.raises(LuvcError, match="This request has finished"):
        request.step()
    with pytest.raises(LuvcError, match="must be between 1 and the export profile's 6"):
        pipeline.request(prepared, GenerationOptions(7))


@pytest.mark.parametrize("family", EXPORT_MATRIX)
def test_fp16_in_place_decode_within_the_fp16_tolerance(family, exports):
    adapter = load_model(family)
    adapter.apply_luvc()
    image = synthetic_image(224, 224, 3)
    inputs = adapter.prepare_inputs([image], PROMPT)
    with torch.no_grad():
        expected = greedy_generate(adapter.model, inputs, 8).numpy()
    pipeline = Pipeline(exports(family, "fp16"))
    assert pipeline.sessions.kv_cache(1).buffers[0][0].dtype == torch.float16
    prepared = pipeline.preparer.from_arrays(inputs["input_ids"].numpy(), inputs["pixel_values"].numpy(), (224, 224))
    tokens, _, _ = pipeline.greedy(prepared, 8)
    assert metrics.token_agreement(tokens, expected) >= FP16_TOKEN_AGREEMENT


@pytest.mark.gpu
def test_transfer_stats_taken_before_any_session_opens_do_not_move_with_the_run(exports):
    """What ``transfer_stats`` returns is a copy: taken before the first request (no session open yet, so it is the
    pipeline's own counts) it stays as it was, and ``since`` counts the run (the GPU test below met a live object and
    counted 0 device-to-host bytes)."""
    pipeline = Pipeline(exports("tiny-qwen2-vl"))
    before = pipeline.sessions.transfer_stats()
    generation = pipeline.generate(synthetic_image(224, 224, 4), PROMPT, GenerationOptions(8))
    assert before.device_to_host_bytes == 0 and before.calls == 0
    moved = pipeline.sessions.transfer_stats().since(before)
    assert moved.device_to_host_bytes == 8 * generation.tokens.shape[1]  # token ids alone


def test_cuda_pipeline_keeps_the_decode_loop_on_the_gpu(exports):
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA; none here")
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (CUDAExecutionProvider); the CPU package is installed")
    image = synthetic_image(224, 224, 4)
    expected = Pipeline(exports("tiny-qwen2-vl")).generate(image, PROMPT, GenerationOptions(8)).tokens
    pipeline = Pipeline(exports("tiny-qwen2-vl"), device="cuda:0")
    before = pipeline.sessions.transfer_stats()
    generation = pipeline.generate(image, PROMPT, GenerationOptions(8))
    np.testing.assert_array_equal(generation.tokens, expected)
    assert "CUDAExecutionProvider" in pipeline.sessions.providers_in_use()
    moved = pipeline.sessions.transfer_stats().since(before)
    assert moved.device_to_host_bytes == 8 * generation.tokens.shape[1]  # token ids alone


def test_a_request_whose_cache_another_request_took_is_refused(exports):
    pipeline = Pipeline(exports("tiny-llava"))
    prepared = pipeline.prepare([synthetic_image(224, 224, 1)], [PROMPT])
    first = pipeline.request(prepared, GenerationOptions(4, stop_token_ids=()))
    first.step()
    second = pipeline.request(prepared, GenerationOptions(4, stop_token_ids=()))
    assert len(list(second)) == 4
    with pytest.raises(LuvcError, match="Another request on this pipeline has taken its KV cache"):
        first.step()


def test_release_closes_the_sessions_and_a_later_request_reopens_them(exports):
    pipeline = Pipeline(exports("tiny-llava"))
    image = synthetic_image(224, 224, 5)
    first = pipeline.generate(image, PROMPT, GenerationOptions(4))
    assert pipeline.sessions.kv_buffer_bytes() > 0 and pipeline.sessions.providers_in_use()
    pipeline.release()
    assert pipeline.sessions.kv_buffer_bytes() == 0 and pipeline.sessions.providers_in_use() == []
    np.testing.assert_array_equal(pipeline.generate(image, PROMPT, GenerationOptions(4)).tokens, first.tokens)


def test_prompt_longer_than_the_export_profile(exports):
    pipeline = Pipeline(exports("tiny-llava"))
    with pytest.raises(LuvcError, match=r"allows 512; shorten it or re-export with --max-text-tokens 6\d\d"):
        pipeline.generate(synthetic_image(224, 224), "x" * 600, GenerationOptions(2))


def test_image_outside_the_buckets(exports):
    with pytest.raises(LuvcError, match=r"outside this export's profile.*\(--fit nearest or pad does\)"):
        Pipeline(exports("tiny-qwen2-vl"), fit="exact").generate(synthetic_image(448, 448), "hi", GenerationOptions(2))


def test_a_prompt_longer_than_any_export_takes_is_not_told_to_re_export(exports):
    """The advice must be one export accepts: past its --max-text-tokens ceiling, only shortening helps."""
    from luvc.export.profile import PROFILE_LIMITS
    from luvc.runtime.prompt_ids import row_shift

    manifest = ExportManifest.load(exports("tiny-llava"), verify=False)
    bucket = next(iter(manifest.buckets.values()))
    ceiling = PROFILE_LIMITS["max_text_tokens"]
    image_id = manifest.template.image_token_id
    (start, count), *_ = bucket.visual_spans
    ids = [1] * start + [image_id] * count + [5] * (ceiling + 10)
    with pytest.raises(LuvcError, match=rf"shorten it \(no export takes more than {ceiling} text tokens\)") as error:
        row_shift(manifest, bucket, ids)
    assert "--max-text-tokens" not in str(error.value)


def test_generate_ends_at_the_length_or_stop_string_and_applies_the_penalty_as_the_loop_does(exports):
    """The generation cases every front end shares (tests.generation_cases), one ``generate`` each."""
    pipeline = Pipeline(exports("tiny-qwen2-vl"))
    reference = shared.Reference.of(pipeline)
    for case in reference.cases():
        generation = pipeline.generate(shared.image(), shared.PROMPT, case.options())
        answer = shared.Answer(generation.texts[0], generation.finish_reasons[0], generation.tokens.shape[1])
        reference.check(case, answer)
        if case.name == "penalty":
            assert shared.penalty_breaks_repeats(generation.tokens[0].tolist())
