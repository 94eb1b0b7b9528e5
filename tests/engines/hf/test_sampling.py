"""Next-token choice per row against transformers' own logits processors and warpers."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from omniserve.engines.hf.sampling import RowSampler, Sampling

VOCAB = 64


def _scores(seed: int, rows: int = 4) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed))


def test_greedy_rows_follow_generate_processors_each_with_its_own_settings() -> None:
    seen = {0: [3, 5, 9], 1: [], 2: [1, 2, 3, 4, 60], 3: [7]}
    settings = {
        0: Sampling(repetition_penalty=1.3, eos=frozenset({2}), min_new_tokens=3),
        1: Sampling(banned=frozenset({10, 11, 12}), eos=frozenset({2})),
        2: Sampling(repetition_penalty=0.8, eos=frozenset({60, 61})),
        3: Sampling(repetition_penalty=1.05, banned=frozenset({7}), min_new_tokens=1,
                    eos=frozenset({8})),
    }  # fmt: skip
    sampler = RowSampler(4, VOCAB, "cpu")
    for slot, sampling in settings.items():
        sampler.assign(slot, sampling, seen[slot])
    for step in range(6):
        scores = _scores(step) * 3
        expected = []
        for slot, s in settings.items():
            ids = torch.tensor([seen[slot] + [0] * 0], dtype=torch.long)
            processors = LogitsProcessorList()
            if s.repetition_penalty != 1.0 and seen[slot]:
                processors.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
            if s.banned:
                processors.append(SuppressTokensLogitsProcessor(sorted(s.banned)))
            if s.min_new_tokens:
                # generate counts new tokens from the prompt length; here ``step`` were made.
                processors.append(
                    MinNewTokensLengthLogitsProcessor(ids.shape[1] - step, s.min_new_tokens,
                                                      sorted(s.eos))
                )  # fmt: skip
            if not seen[slot]:
                ids = torch.zeros(1, 0, dtype=torch.long)
            out = processors(ids, scores[slot : slot + 1].clone())
            expected.append(int(out.argmax(-1)))
        got = sampler.pick(scores, [0, 1, 2, 3])
        assert got == expected, step
        for slot, token in zip(settings, got, strict=True):
            seen[slot].append(token)


def test_single_id_bad_words_are_never_chosen() -> None:
    sampler = RowSampler(1, VOCAB, "cpu")
    sampler.assign(0, Sampling(banned=frozenset({5})))
    scores = torch.zeros(1, VOCAB)
    scores[0, 5] = 10.0
    expected = NoBadWordsLogitsProcessor([[5]], eos_token_id=None)(
        torch.zeros(1, 1, dtype=torch.long), scores.clone()
    ).argmax(-1)
    assert sampler.pick(scores, [0]) == [int(expected)] != [5]


def test_a_forced_token_wins_once() -> None:
    sampler = RowSampler(2, VOCAB, "cpu")
    sampler.assign(1, Sampling())
    scores = _scores(1, rows=2)
    sampler.force(1, 33)
    assert sampler.pick(scores, [1]) == [33]
    assert sampler.pick(scores, [1]) == [int(scores[1].argmax())]


def test_sampling_draws_only_from_what_the_warpers_keep() -> None:
    """Every draw lies in the set transformers' temperature/top-k/top-p would sample from,
    and across many draws the frequencies follow its probabilities."""
    s = Sampling(do_sample=True, temperature=0.7, top_k=10, top_p=0.8, seed=3)
    scores = _scores(9, rows=1) * 2
    warped = LogitsProcessorList(
        [TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)]
    )(torch.zeros(1, 1, dtype=torch.long), scores.clone())
    probs = warped.softmax(-1)[0]
    allowed = set(torch.nonzero(probs > 0).flatten().tolist())
    sampler = RowSampler(1, VOCAB, "cpu")
    sampler.assign(0, s)
    counts = torch.zeros(VOCAB)
    for _ in range(3000):
        (token,) = sampler.pick(scores, [0])
        assert token in allowed
        counts[token] += 1
    assert (counts / counts.sum() - probs).abs().max() < 0.04


def test_a_seed_repeats_whatever_shares_the_batch() -> None:
    def draws(slot: int, neighbour: int | None) -> list[int]:
        sampler = RowSampler(4, VOCAB, "cpu")
        sampler.assign(slot, Sampling(do_sample=True, temperature=1.0, seed=42))
        slots = [slot]
        if neighbour is not None:
            sampler.assign(neighbour, Sampling(do_sample=True, seed=7))
            slots.append(neighbour)
        out = []
        for step in range(20):
            same = _scores(step, rows=1).expand(4, -1)  # every row sees the same logits
            out.append(sampler.pick(same, sorted(slots))[sorted(slots).index(slot)])
        return out

    alone = draws(0, None)
    assert draws(2, 0) == alone
    assert draws(3, 1) == alone
    sampler = RowSampler(1, VOCAB, "cpu")
    sampler.assign(0, Sampling(do_sample=True, temperature=1.0, seed=43))
    assert [sampler.pick(_scores(i, rows=1), [0])[0] for i in range(20)] != alone


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_zero_is_greedy(temperature: float) -> None:
    sampler = RowSampler(1, VOCAB, "cpu")
    sampler.assign(0, Sampling(do_sample=True, temperature=temperature))
    scores = _scores(4, rows=1)
    assert sampler.pick(scores, [0]) == [int(scores.argmax())]
