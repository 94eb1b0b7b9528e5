"""What a checkpoint is, read from its config before any weight is loaded.

The served catalog is built from this: which family (the open processors' token counting), whether
it can speak (a talker) and with which speakers, whether it thinks, how long its context is. A
served name keeps the catalog's limits where the weights allow them and loses what they cannot do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from omniserve.catalog import ModeLimits, ModelSpec, Voice
from omniserve.config import ServedCheckpoint
from omniserve.errors import StartupError

Family = Literal["qwen2.5-omni", "qwen3-omni"]
Kind = Literal["instruct", "thinking", "captioner"]

MODEL_TYPES: dict[str, Family] = {
    "qwen2_5_omni": "qwen2.5-omni",
    "qwen3_omni_moe": "qwen3-omni",
}
# The catalog entry a new served name copies its limits and voices from, per family.
FAMILY_BASE: dict[Family, str] = {
    "qwen2.5-omni": "qwen2.5-omni-7b",
    "qwen3-omni": "qwen3-omni-flash",
}


class CheckpointError(StartupError):
    """A checkpoint that cannot be served as configured; the message says what to change."""


@dataclass(frozen=True)
class CheckpointInfo:
    """Facts about one checkpoint, from its config (and speaker file)."""

    source: str  # Hub id or local directory, as configured
    revision: str | None
    family: Family
    kind: Kind
    has_talker: bool
    speakers: tuple[str, ...]  # as the model spells them
    context: int  # the thinker's max_position_embeddings

    def speaker(self, name: str) -> str | None:
        """The model's own spelling of ``name`` (speaker names are matched case-insensitively)."""
        for speaker in self.speakers:
            if speaker.lower() == name.lower():
                return speaker
        return None


def kind_from_name(source: str) -> Kind:
    lowered = Path(source.rstrip("/")).name.lower()
    if "captioner" in lowered:
        return "captioner"
    if "thinking" in lowered:
        return "thinking"
    return "instruct"


def inspect_checkpoint(served: ServedCheckpoint) -> CheckpointInfo:
    """Read the config (downloading only small files from the Hub when ``source`` is an id)."""
    try:
        from transformers import AutoConfig
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise CheckpointError(
            "the transformers engine needs the 'transformers' extra and torch: "
            "pip install 'omniserve[transformers]' torch"
        ) from exc
    try:
        config = AutoConfig.from_pretrained(served.checkpoint, revision=served.revision)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read the model config of {served.checkpoint!r}: {_first_line(exc)}. "
            "Give a local directory with config.json, or a Hub id this machine can download "
            "(weights go to the Hugging Face cache)."
        ) from exc
    family = MODEL_TYPES.get(getattr(config, "model_type", ""))
    if family is None:
        raise CheckpointError(
            f"{served.checkpoint!r} is a {config.model_type!r} model; the transformers engine "
            "serves Qwen2.5-Omni and Qwen3-Omni checkpoints"
        )
    has_talker = bool(getattr(config, "enable_audio_output", False))
    speakers: tuple[str, ...] = ()
    if has_talker:
        speakers = _speakers(served, family, config)
    text_config = _thinker_text_config(config)
    return CheckpointInfo(
        source=served.checkpoint,
        revision=served.revision,
        family=family,
        kind=served.kind or kind_from_name(served.checkpoint),
        has_talker=has_talker,
        speakers=speakers,
        context=int(getattr(text_config, "max_position_embeddings", 32768)),
    )


def _thinker_text_config(config: Any) -> Any:
    thinker = config.thinker_config
    return getattr(thinker, "text_config", thinker)


def _speakers(served: ServedCheckpoint, family: Family, config: Any) -> tuple[str, ...]:
    if family == "qwen3-omni":
        return tuple(config.talker_config.speaker_id or {})
    path = speaker_file(served)
    if path is None:
        raise CheckpointError(
            f"{served.checkpoint!r} has a talker but no spk_dict.pt with its speakers"
        )
    import torch

    return tuple(torch.load(path, weights_only=True))


def speaker_file(served: ServedCheckpoint) -> str | None:
    """Qwen2.5-Omni keeps its speakers in ``spk_dict.pt`` next to the weights."""
    from transformers.utils.hub import cached_file

    try:
        path = cached_file(
            served.checkpoint,
            "spk_dict.pt",
            revision=served.revision,
            _raise_exceptions_for_missing_entries=False,
        )
    except OSError:
        return None
    return str(path) if path else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- served names ------------------------------------------------------------------------

# The speaker each catalog voice speaks with unless configured otherwise or named like a speaker:
# by the voice's gender.
DEFAULT_SPEAKERS: dict[Family, dict[str, str]] = {
    "qwen2.5-omni": {"female": "Chelsie", "male": "Ethan"},
    "qwen3-omni": {"female": "Chelsie", "male": "Ethan"},
}


def voice_map(base: ModelSpec, info: CheckpointInfo, overrides: dict[str, str]) -> dict[str, str]:
    """Every catalog voice of ``base`` -> one of the model's speakers (model spelling)."""
    unknown = sorted(set(overrides) - set(base.voice_names))
    if unknown:
        raise CheckpointError(
            f"voices {unknown} are not voices of {base.name}; "
            f"its voices are {', '.join(base.voice_names)}"
        )
    mapping: dict[str, str] = {}
    for voice in base.voices:
        wanted = overrides.get(voice.name)
        if wanted is None:
            # A voice named like one of the model's speakers (Chelsie, Ethan, Aiden) is that one.
            own = info.speaker(voice.name)
            wanted = own or DEFAULT_SPEAKERS[info.family][voice.gender]
        speaker = info.speaker(wanted)
        if speaker is None:
            raise CheckpointError(
                f"voice {voice.name} maps to speaker {wanted!r}, which {info.source!r} lacks; "
                f"its speakers are {', '.join(info.speakers) or 'none'}"
            )
        mapping[voice.name] = speaker
    return mapping


def _capped(limits: ModeLimits, context: int) -> ModeLimits:
    ctx = min(limits.context, context)
    return ModeLimits(
        context=ctx,
        max_input=min(limits.max_input, ctx - 1),
        max_output=min(limits.max_output, ctx - 1),
        max_reasoning=None if limits.max_reasoning is None else min(limits.max_reasoning, ctx - 1),
    )


def served_spec(
    name: str,
    base: ModelSpec,
    *,
    answer: CheckpointInfo | None,
    thinker: CheckpointInfo | None,
    speaks: bool,
) -> ModelSpec:
    """``base`` as served by these weights: renamed, limits capped, capabilities narrowed.

    ``answer`` serves requests without thinking, ``thinker`` those with; either may be missing.
    """
    infos = [i for i in (answer, thinker) if i is not None]
    context = min(i.context for i in infos)
    thinking_limits = None
    if thinker is not None:
        thinking_limits = _capped(base.thinking_limits or base.limits, thinker.context)
    voices: tuple[Voice, ...] = base.voices if speaks else ()
    return replace(
        base,
        name=name,
        limits=_capped(base.limits, context),
        thinking_limits=thinking_limits,
        voices=voices,
        audio_output=speaks,
        audio_input_required=answer is not None and answer.kind == "captioner",
        snapshot=base.snapshot if name == base.name else None,
        description=f"{base.description} Served from {', '.join(i.source for i in infos)}.",
    )
