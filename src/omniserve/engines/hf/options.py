"""How each stage of a request picks its tokens: the model's defaults, the request, the server's
``generate_kwargs``, in that order of precedence.

``generate_kwargs`` keep the names ``generate()`` of the Qwen-Omni models takes (``thinker_*``,
``talker_*``, ``token2wav_*``; an unprefixed name applies to the thinker and the talker), so a
setting that worked with ``generate`` means the same here. Names the engine does not know are
refused when the server starts, not on every request.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from omniserve.engines.hf.checkpoint import CheckpointError
from omniserve.engines.hf.sampling import Sampling
from omniserve.job import GenerationJob

STAGE_KEYS = {
    "max_new_tokens",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "eos_token_id",
    "suppress_tokens",
    "bad_words_ids",
}
VOCODER_KEYS = {"num_steps", "guidance_scale", "sway_coefficient"}

# What generate() of each family samples speech with unless told otherwise.
TALKER_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2.5-omni": dict(do_sample=True, top_k=40, top_p=0.8, temperature=0.9,
                         repetition_penalty=1.05, max_new_tokens=4096),
    "qwen3-omni": dict(do_sample=True, top_k=50, top_p=1.0, temperature=0.9,
                       repetition_penalty=1.05, max_new_tokens=4096),
}  # fmt: skip


def split_generate_kwargs(kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``generate_kwargs`` by stage: {"thinker": ..., "talker": ..., "token2wav": ...}."""
    out: dict[str, dict[str, Any]] = {"thinker": {}, "talker": {}, "token2wav": {}}
    unknown = []
    for key, value in kwargs.items():
        stage, _, name = key.partition("_")
        if stage in ("thinker", "talker") and name in STAGE_KEYS:
            out[stage][name] = value
        elif stage == "token2wav" and name in VOCODER_KEYS:
            out["token2wav"][name] = value
        elif key in STAGE_KEYS:
            out["thinker"].setdefault(key, value)
            out["talker"].setdefault(key, value)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"generate_kwargs: {', '.join(sorted(unknown))} not understood; the transformers "
            f"engine takes thinker_* and talker_* with {', '.join(sorted(STAGE_KEYS))}, and "
            f"token2wav_* with {', '.join(sorted(VOCODER_KEYS))}"
        )
    for stage in ("thinker", "talker"):
        words = out[stage].get("bad_words_ids")
        if words is not None and any(len(w) != 1 for w in words):
            raise CheckpointError(f"generate_kwargs: {stage}_bad_words_ids takes single ids only")
    return out


def _ids(value: Any) -> frozenset[int]:
    if value is None:
        return frozenset()
    if isinstance(value, int):
        return frozenset({value})
    return frozenset(int(i) for i in value)


def apply(base: Sampling, overrides: dict[str, Any]) -> Sampling:
    """``base`` with ``generate()``-style settings applied."""
    changes: dict[str, Any] = {}
    for name in ("max_new_tokens", "min_new_tokens", "top_k"):
        if name in overrides:
            changes[name] = int(overrides[name])
    for name in ("temperature", "top_p", "repetition_penalty"):
        if name in overrides:
            changes[name] = float(overrides[name])
    if "do_sample" in overrides:
        changes["do_sample"] = bool(overrides["do_sample"])
    if "eos_token_id" in overrides:
        changes["eos"] = _ids(overrides["eos_token_id"])
    banned = set(base.banned)
    banned |= _ids(overrides.get("suppress_tokens"))
    banned |= {int(w[0]) for w in overrides.get("bad_words_ids") or ()}
    # An end id must stay sayable, whatever else is banned.
    changes["banned"] = frozenset(banned - set(changes.get("eos", base.eos)))
    return replace(base, **changes)


def from_generation_config(config: Any) -> Sampling:
    """A sub-model's own generation config, as ``generate`` would start from it."""
    top_k = getattr(config, "top_k", None)
    return Sampling(
        do_sample=bool(getattr(config, "do_sample", False)),
        temperature=float(getattr(config, "temperature", None) or 1.0),
        top_k=int(top_k) if top_k else 0,
        top_p=float(getattr(config, "top_p", None) or 1.0),
        repetition_penalty=float(getattr(config, "repetition_penalty", None) or 1.0),
        eos=_ids(getattr(config, "eos_token_id", None)),
    )


def thinker_sampling(
    job: GenerationJob,
    defaults: Sampling,
    *,
    eos: frozenset[int],
    max_new_tokens: int,
    overrides: dict[str, Any],
) -> Sampling:
    """The request's sampling over the thinker's defaults; the server's settings win."""
    s = job.sampling
    sampling = replace(defaults, eos=eos, max_new_tokens=max_new_tokens, seed=s.seed)
    if s.temperature is not None:
        if s.temperature <= 0:
            sampling = replace(sampling, do_sample=False)
        else:
            sampling = replace(sampling, do_sample=True, temperature=s.temperature)
    if s.top_p is not None:
        sampling = replace(sampling, top_p=s.top_p)
    if s.top_k is not None:
        sampling = replace(sampling, top_k=s.top_k)
    if s.repetition_penalty is not None:
        sampling = replace(sampling, repetition_penalty=s.repetition_penalty)
    return apply(sampling, overrides)


def talker_sampling(
    family: str,
    *,
    eos: frozenset[int],
    banned: frozenset[int],
    seed: int | None,
    overrides: dict[str, Any],
) -> Sampling:
    """The talker's sampling: the family's defaults, then the server's settings. A request's
    seed makes its speech repeat too."""
    base = Sampling(**TALKER_DEFAULTS[family], eos=eos, banned=banned)
    base = replace(base, seed=None if seed is None else seed + 1)
    return apply(base, overrides)
