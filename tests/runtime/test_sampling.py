"""Next-token choice: greedy is the argmax, filters keep what they promise, and a seed reproduces a draw."""

import pytest
import torch

from luvc.errors import LuvcError
from luvc.runtime.sampling import SamplingConfig, next_tokens, penalized_logits


def _draw(logits: torch.Tensor, config: SamplingConfig, draws: int = 200) -> set[int]:
    generator, out = config.generator(logits.device), torch.empty(logits.shape[0], dtype=torch.long)
    return {int(next_tokens(logits, config, generator, out)[0]) for _ in range(draws)}


LOGITS = torch.tensor([[0.0, 3.0, 2.9, 1.0, -4.0]])


def test_greedy_is_the_argmax_written_into_out():
    out = torch.empty(2, dtype=torch.long)
    logits = torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 1.5]])
    assert next_tokens(logits, SamplingConfig(), None, out) is out
    assert out.tolist() == [1, 0]
    assert SamplingConfig().generator(torch.device("cpu")) is None


def test_top_k_and_top_p_keep_only_their_tokens():
    assert _draw(LOGITS, SamplingConfig(temperature=1.0, top_k=2, seed=0)) == {1, 2}
    # probabilities at temperature 1: 0.47, 0.43, 0.06, ... -> the smallest set reaching 0.5 is the first two
    assert _draw(LOGITS, SamplingConfig(temperature=1.0, top_p=0.5, seed=0)) == {1, 2}
    assert _draw(LOGITS, SamplingConfig(temperature=1.0, top_p=0.3, seed=0)) == {1}


def test_a_seed_reproduces_the_sequence():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(3))

    def sequence(seed: int) -> list[int]:
        config = SamplingConfig(temperature=1.5, seed=seed)
        generator, out = config.generator(logits.device), torch.empty(1, dtype=torch.long)
        return [int(next_tokens(logits, config, generator, out)[0]) for _ in range(30)]

    assert sequence(1) == sequence(1)
    assert sequence(1) != sequence(2)


BAD_SETTINGS = [
    {"temperature": -1.0},
    {"temperature": float("nan")},
    {"temperature": float("inf")},
    {"temperature": "1"},
    {"top_k": -1},
    {"top_k": 2.5},
    {"top_p": 0.0},
    {"top_p": 1.5},
    {"top_p": float("nan")},
]


@pytest.mark.parametrize("kwargs", BAD_SETTINGS, ids=map(str, BAD_SETTINGS))
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(LuvcError, match="Sampling needs a finite temperature >= 0, an integer top_k >= 0"):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64, 1e23, True, 1.5])
def test_seeds_outside_torchs_range_are_refused(seed):
    with pytest.raises(LuvcError, match=r"must be an integer between 0 and 9223372036854775807 \(2\*\*63 - 1\)"):
        SamplingConfig(temperature=1.0, seed=seed)


def test_the_largest_seed_seeds_a_generator():
    generator = SamplingConfig(temperature=1.0, seed=2**63 - 1).generator(torch.device("cpu"))
    assert generator.initial_seed() == 2**63 - 1


def test_penalties_lower_the_logits_of_tokens_already_generated():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    counts = torch.tensor([[0.0, 2.0, 1.0, 0.0]])
    config = SamplingConfig(presence_penalty=1.0, frequency_penalty=0.5)
    # token 1: 2 - 2 * 0.5 - 1 = 0; token 2: 3 - 1 * 0.5 - 1 = 1.5; unseen tokens keep theirs
    assert penalized_logits(logits, config, counts).tolist() == [[1.0, 0.0, 1.5, 0.5]]


def test_a_greedy_presence_penalty_walks_down_the_ranking_and_counts_each_choice():
    logits = torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]])
    config = SamplingConfig(presence_penalty=2.0)
    counts, out = torch.zeros(2, 3), torch.empty(2, dtype=torch.long)
    chosen = [next_tokens(logits, config, None, out, counts)[0].item() for _ in range(4)]
    # 1 (1.0), then 2 (0.5 > 0 > -1), then 0 (0 > -1 > -1.5), then 1 again (-1 > -1.5 > -2)
    assert chosen == [1, 2, 0, 1]
    assert counts.tolist() == [[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]]


def test_a_negative_frequency_penalty_makes_repeats_likelier():
    logits = torch.tensor([[0.0, 0.1]])
    config = SamplingConfig(frequency_penalty=-2.0)
    counts, out = torch.tensor([[1.0, 0.0]]), torch.empty(1, dtype=torch.long)
    assert next_tokens(logits, config, None, out, counts).tolist() == [0]  # 0 + 2 > 0.1


@pytest.mark.parametrize("value", [2.5, -3.0, float("nan"), float("inf"), True, "1"])
@pytest.mark.parametrize("name", ["presence_penalty", "frequency_penalty"])
def test_penalties_outside_openais_range_are_refused(name, value):
    with pytest.raises(LuvcError, match=f"{name}=.* must be a finite number between -2 and 2"):
        SamplingConfig(**{name: value})
