"""``serve --backend openvino`` for every tiny family, through the official OpenAI client over real HTTP: answers are
the pipeline's own, streamed or not, and a bad request next to good ones fails alone."""

import concurrent.futures

import openai
import pytest

from luvc.images import synthetic_image
from luvc.runtime.openvino_graph import import_openvino
from luvc.runtime.options import GenerationOptions
from luvc.runtime.pipeline import Pipeline
from tests.conftest import EXPORT_MATRIX
from tests.serve.conftest import MODEL, data_url, running_server

pytest.importorskip("openvino")
import_openvino()  # as the runtime imports it: OpenVINO's telemetry thread ended
PROMPT = "Describe the image."
FAMILIES = EXPORT_MATRIX


def _messages(image) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": PROMPT}]
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize("family", FAMILIES)
def test_serving_on_openvino_answers_what_the_pipeline_answers(family, exports):
    folder = exports(family, "fp32")
    images = [synthetic_image(224, 224, seed) for seed in (1, 2)]
    reference = Pipeline(folder, backend="openvino")
    expected = [reference.generate(image, PROMPT, GenerationOptions(16)).texts[0] for image in images]
    reference.release()
    with running_server(folder, backend="openvino") as (base_url, service):
        assert service.pipeline.backend == "openvino"
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)

        def ask(image):
            reply = client.chat.completions.create(model=MODEL, messages=_messages(image), max_tokens=16)
            return reply.choices[0].message.content

        def ask_badly():
            with pytest.raises(openai.BadRequestError, match="max_tokens"):
                client.chat.completions.create(model=MODEL, messages=_messages(images[0]), max_tokens=0)
            return "refused"

        with concurrent.futures.ThreadPoolExecutor(3) as pool:  # in flight together: one batch, one bad neighbour
            answers = [pool.submit(ask, images[0]), pool.submit(ask_badly), pool.submit(ask, images[1])]
            assert [future.result() for future in answers] == [expected[0], "refused", expected[1]]
        stream = client.chat.completions.create(model=MODEL, messages=_messages(images[1]), max_tokens=16, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == expected[1]
