"""Each stage's sampling: the model's defaults, then the request, then generate_kwargs."""

from __future__ import annotations

import pytest

from omniserve.catalog import Catalog
from omniserve.engines.hf.checkpoint import CheckpointError
from omniserve.engines.hf.options import (
    split_generate_kwargs,
    talker_sampling,
    thinker_sampling,
)
from omniserve.engines.hf.sampling import Sampling
from omniserve.job import GenerationJob, PromptTokens, SamplingParams

FLASH = Catalog.default().get("qwen3-omni-flash")


def _job(**sampling: object) -> GenerationJob:
    return GenerationJob(
        request_id="r",
        model_name=FLASH.name,
        model=FLASH,
        messages=(),
        prompt_tokens=PromptTokens(),
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def test_generate_kwargs_split_by_stage_as_generate_names_them() -> None:
    stages = split_generate_kwargs(
        {
            "thinker_min_new_tokens": 5,
            "talker_max_new_tokens": 100,
            "talker_bad_words_ids": [[9], [10]],
            "token2wav_num_steps": 4,
            "repetition_penalty": 1.1,
        }
    )
    assert stages["thinker"] == {"min_new_tokens": 5, "repetition_penalty": 1.1}
    assert stages["talker"] == {
        "max_new_tokens": 100,
        "bad_words_ids": [[9], [10]],
        "repetition_penalty": 1.1,
    }
    assert stages["token2wav"] == {"num_steps": 4}


@pytest.mark.parametrize(
    "kwargs",
    [{"thinker_no_such_option": 1}, {"streamer": 1}, {"talker_bad_words_ids": [[1, 2]]}],
)
def test_what_the_engine_cannot_honour_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(CheckpointError, match="generate_kwargs"):
        split_generate_kwargs(kwargs)


def test_the_request_overrides_the_model_and_the_server_overrides_both() -> None:
    defaults = Sampling(do_sample=False, temperature=1.0, top_p=1.0)
    eos = frozenset({2})
    plain = thinker_sampling(_job(), defaults, eos=eos, max_new_tokens=50, overrides={})
    assert plain.greedy() and plain.max_new_tokens == 50 and plain.eos == eos
    hot = thinker_sampling(
        _job(temperature=0.7, top_p=0.9, top_k=20, seed=5, repetition_penalty=1.2),
        defaults,
        eos=eos,
        max_new_tokens=50,
        overrides={},
    )
    assert (hot.do_sample, hot.temperature, hot.top_p, hot.top_k, hot.seed) == (
        True, 0.7, 0.9, 20, 5,
    )  # fmt: skip
    assert hot.repetition_penalty == 1.2
    cold = thinker_sampling(_job(temperature=0), hot, eos=eos, max_new_tokens=5, overrides={})
    assert cold.greedy()
    pinned = thinker_sampling(
        _job(temperature=0.7),
        defaults,
        eos=eos,
        max_new_tokens=50,
        overrides={"min_new_tokens": 9, "do_sample": False, "suppress_tokens": [4]},
    )
    assert pinned.min_new_tokens == 9 and pinned.greedy() and pinned.banned == frozenset({4})


def test_speech_samples_as_generate_does_and_a_seed_carries_over() -> None:
    qwen25 = talker_sampling(
        "qwen2.5-omni", eos=frozenset({8292}), banned=frozenset({8293}), seed=10, overrides={}
    )
    assert (qwen25.do_sample, qwen25.top_k, qwen25.top_p, qwen25.temperature) == (
        True, 40, 0.8, 0.9,
    )  # fmt: skip
    assert qwen25.repetition_penalty == 1.05 and qwen25.seed == 11
    qwen3 = talker_sampling(
        "qwen3-omni",
        eos=frozenset({1}),
        banned=frozenset(),
        seed=None,
        overrides={"do_sample": False, "bad_words_ids": [[7]], "max_new_tokens": 30},
    )
    assert qwen3.greedy() and qwen3.banned == frozenset({7}) and qwen3.max_new_tokens == 30
    assert qwen3.top_k == 50 and qwen3.seed is None


def test_an_end_id_is_never_banned() -> None:
    sampling = talker_sampling(
        "qwen2.5-omni",
        eos=frozenset({8292, 8294}),
        banned=frozenset({8292, 8293, 8295}),
        seed=None,
        overrides={"eos_token_id": [8295]},
    )
    assert sampling.eos == frozenset({8295})
    assert sampling.banned == frozenset({8292, 8293})
