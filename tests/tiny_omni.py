"""Tiny random Qwen2.5-Omni / Qwen3-Omni checkpoints, built offline for tests.

Configs, token layout and quirks were verified with transformers 5.23 and torch 2.13 on the
CPU. The checkpoints are saved with ``save_pretrained`` and loaded back through
``from_pretrained`` so tests exercise the same path as a real model directory.

Layout of a built checkpoint directory (the layout of the published checkpoints)::

    <dir>/config.json, model.safetensors, generation_config.json, [spk_dict.pt]
    <dir>/tokenizer.json, tokenizer_config.json, ...   Qwen2Tokenizer (byte-level BPE trained here)
    <dir>/preprocessor_config.json   image processor and feature extractor settings, merged
    <dir>/chat_template.jinja

Without torchvision the processor is rebuilt from its parts by the engine's loader
(``omniserve.engines.hf.loader.build_processor``), with a numpy path for video frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QWEN25 = "qwen2.5-omni"
QWEN3 = "qwen3-omni"
FAMILIES = (QWEN25, QWEN3)

SEED = 1234

# Fixed token ids: the tokenizer is trained with these tokens first, in this order.
TOKENS: dict[str, int] = {
    "endoftext": 0,
    "im_start": 1,
    "im_end": 2,
    "audio": 3,
    "audio_start": 4,
    "audio_end": 5,
    "image": 6,
    "video": 7,
    "vision_start": 8,
    "vision_end": 9,
    "vision_pad": 10,
    "tts_pad": 11,
    "tts_text_bos": 12,
    "tts_text_eod": 13,
    "tts_text_bos_single": 14,
    "system": 15,
    "user": 16,
    "assistant": 17,
}
THINKER_VOCAB = 512
QWEN25_TALKER_EOS = 62  # tts_codec_end_token_id of the tiny Qwen2.5 talker
QWEN25_SPEAKERS = ("Chelsie", "Ethan")
QWEN3_SPEAKERS = ("ethan", "chelsie")

# Names of the media tokens per family (ids 3..9 in TOKENS).
_MEDIA_NAMES = {
    QWEN25: {
        "audio_token": "<|AUDIO|>",
        "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>",
        "image_token": "<|IMAGE|>",
        "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>",
        "vision_eos_token": "<|vision_eos|>",
    },
    QWEN3: {
        "audio_token": "<|audio_pad|>",
        "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>",
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
    },
}

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello there! What is in this picture, and what do you hear?",
    "Describe the image and the audio clip in one short sentence.",
    "A tiny random model says nothing useful, but it says it quickly.",
    "0123456789 + - * / = ( ) [ ] { } , . ; : ' \" ? !",
]


def _special_tokens(family: str) -> list[str]:
    """The 15 special tokens in id order 0..14."""
    names = _MEDIA_NAMES[family]
    return [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        names["audio_token"],
        names["audio_bos_token"],
        names["audio_eos_token"],
        names["image_token"],
        names["video_token"],
        names["vision_bos_token"],
        names["vision_eos_token"],
        "<|vision_pad|>",
        "<|tts_pad|>",
        "<|tts_text_bos|>",
        "<|tts_text_eod|>",
        "<|tts_text_bos_single|>",
    ]


def _chat_template(family: str) -> str:
    names = _MEDIA_NAMES[family]
    image = names["vision_bos_token"] + names["image_token"] + names["vision_eos_token"]
    video = names["vision_bos_token"] + names["video_token"] + names["vision_eos_token"]
    audio = names["audio_bos_token"] + names["audio_token"] + names["audio_eos_token"]
    return (
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string %}{{- message['content'] }}"
        "{%- else %}{%- for part in message['content'] %}"
        "{%- if part['type'] == 'image' %}{{- '" + image + "' }}"
        "{%- elif part['type'] == 'video' %}{{- '" + video + "' }}"
        "{%- elif part['type'] == 'audio' %}{{- '" + audio + "' }}"
        "{%- elif part['type'] == 'text' %}{{- part['text'] }}"
        "{%- endif %}{%- endfor %}{%- endif %}"
        "{{- '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


def _build_tokenizer(family: str) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    specials = _special_tokens(family)
    words = ["system", "user", "assistant"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials + words,  # ids 0..17, in order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    assert len(vocab) <= THINKER_VOCAB

    names = _MEDIA_NAMES[family]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(names),
        model_max_length=4096,
    )
    # Without normalized=False the specials are split into bytes (e.g. <|im_start|>).
    tokenizer.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tokenizer.add_tokens(words)
    tokenizer.add_tokens(["<think>", "</think>"])  # ordinary added tokens, as in Qwen3's
    for name, idx in TOKENS.items():
        if name in ("system", "user", "assistant"):
            assert tokenizer.convert_tokens_to_ids(name) == idx, name
    return tokenizer


def _build_processor_pieces(family: str) -> tuple[Any, Any]:
    from transformers import Qwen2VLImageProcessorPil, WhisperFeatureExtractor

    patch = 14 if family == QWEN25 else 16
    factor = patch * 2  # patch * merge
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": factor * factor, "longest_edge": 4 * factor * factor},
    )
    feature_extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=2)
    return image_processor, feature_extractor


def _save_processor(directory: Path, family: str) -> None:
    """Tokenizer files, one merged preprocessor_config.json and the chat template."""
    image_processor, feature_extractor = _build_processor_pieces(family)
    _build_tokenizer(family).save_pretrained(directory)
    merged = {**feature_extractor.to_dict(), **image_processor.to_dict()}
    merged["processor_class"] = (
        "Qwen2_5OmniProcessor" if family == QWEN25 else "Qwen3OmniMoeProcessor"
    )
    (directory / "preprocessor_config.json").write_text(json.dumps(merged, indent=2))
    (directory / "chat_template.jinja").write_text(_chat_template(family))


# What both families' tiny encoders and thinkers share; each config adds its own fields.
_AUDIO_BASE = dict(
    num_mel_bins=128,
    encoder_layers=1,
    encoder_attention_heads=2,
    encoder_ffn_dim=32,
    d_model=16,
    output_dim=32,
    max_source_positions=1500,
)
_VISION_BASE = dict(
    depth=1,
    hidden_size=16,
    intermediate_size=32,
    num_heads=2,
    in_channels=3,
    spatial_merge_size=2,
    temporal_patch_size=2,
    out_hidden_size=32,
)
_TEXT_BASE = dict(vocab_size=THINKER_VOCAB, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=4096, eos_token_id=TOKENS["im_end"],
                  pad_token_id=TOKENS["endoftext"])  # fmt: skip


def qwen25_config() -> Any:
    from transformers import Qwen2_5OmniConfig

    mrope = dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 1, 1])
    return Qwen2_5OmniConfig(
        thinker_config=dict(
            audio_config=dict(_AUDIO_BASE, n_window=100),
            vision_config=dict(
                _VISION_BASE, patch_size=14, window_size=112, fullatt_block_indexes=[0]
            ),
            text_config=dict(_TEXT_BASE, rope_parameters=mrope, tie_word_embeddings=False),
            audio_token_index=TOKENS["audio"],
            image_token_index=TOKENS["image"],
            video_token_index=TOKENS["video"],
            audio_start_token_id=TOKENS["audio_start"],
            audio_end_token_id=TOKENS["audio_end"],
            user_token_id=TOKENS["user"],
            # Not declared fields, but get_rope_index reads vision_start_token_id.
            vision_start_token_id=TOKENS["vision_start"],
            vision_end_token_id=TOKENS["vision_end"],
            position_id_per_seconds=25,
            seconds_per_chunk=2,
        ),
        talker_config=dict(
            vocab_size=64,
            embedding_size=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=4096,
            rope_parameters=mrope,
            tts_text_start_token_id=TOKENS["tts_text_bos"],
            tts_text_end_token_id=TOKENS["tts_text_eod"],
            tts_text_pad_token_id=TOKENS["tts_pad"],
            tts_codec_start_token_id=61,
            tts_codec_end_token_id=QWEN25_TALKER_EOS,
            tts_codec_pad_token_id=60,
            tts_codec_mask_token_id=63,
            audio_token_index=TOKENS["audio"],
            image_token_index=TOKENS["image"],
            video_token_index=TOKENS["video"],
            vision_start_token_id=TOKENS["vision_start"],
            vision_end_token_id=TOKENS["vision_end"],
            audio_start_token_id=TOKENS["audio_start"],
            audio_end_token_id=TOKENS["audio_end"],
            spatial_merge_size=2,
        ),
        token2wav_config=dict(
            dit_config=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                head_dim=16,
                ff_mult=2,
                emb_dim=16,
                max_position_embeddings=4096,
                block_size=24,
                look_ahead_layers=[1],
                look_backward_layers=[0],
                repeats=2,
                num_embeds=64,  # = talker vocab
                mel_dim=16,
                dropout=0.0,
                enc_emb_dim=16,
                enc_dim=16,
                enc_channels=[32, 32, 32],
                enc_kernel_sizes=[5, 3, 1],
                enc_dilations=[1, 2, 1],
                enc_attention_channels=16,
                enc_res2net_scale=2,
                enc_se_channels=16,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0),
            ),
            bigvgan_config=dict(
                mel_dim=16,
                upsample_initial_channel=64,  # >= 2 ** len(upsample_rates)
                resblock_kernel_sizes=[3],
                resblock_dilation_sizes=[[1, 3, 5]],
                upsample_rates=[5, 3, 2, 2, 2, 2],
                upsample_kernel_sizes=[11, 7, 4, 4, 4, 4],
            ),
        ),
        enable_audio_output=True,
    )


def qwen3_config() -> Any:
    from transformers import Qwen3OmniMoeConfig

    moe = dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1
    )
    mrope = dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 1, 1], interleaved=True)
    return Qwen3OmniMoeConfig(
        thinker_config=dict(
            audio_config=dict(
                _AUDIO_BASE,
                n_window=50,
                n_window_infer=100,
                conv_chunksize=500,
                downsample_hidden_size=8,
            ),
            vision_config=dict(
                _VISION_BASE,
                patch_size=16,
                num_position_embeddings=64,
                deepstack_visual_indexes=[0],
            ),
            text_config=dict(_TEXT_BASE, rope_parameters=mrope, **moe),
            audio_token_id=TOKENS["audio"],
            image_token_id=TOKENS["image"],
            video_token_id=TOKENS["video"],
            audio_start_token_id=TOKENS["audio_start"],
            user_token_id=TOKENS["user"],
            vision_start_token_id=TOKENS["vision_start"],
            position_id_per_seconds=25,
        ),
        talker_config=dict(
            # Codebook size + 1024: generate suppresses the top 1024 ids except codec EOS.
            text_config=dict(
                vocab_size=32 + 1024,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=4096,
                rope_parameters=mrope,
                shared_expert_intermediate_size=32,
                **moe,
            ),
            code_predictor_config=dict(
                vocab_size=32,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                num_code_groups=4,
                max_position_embeddings=256,
                rope_parameters=dict(rope_type="default", rope_theta=1e6),
            ),
            num_code_groups=4,
            thinker_hidden_size=32,
            accept_hidden_layer=1,
            codec_eos_token_id=38,
            codec_pad_id=36,
            codec_bos_id=37,
            codec_nothink_id=39,
            codec_think_bos_id=40,
            codec_think_eos_id=41,
            speaker_id={"ethan": 42, "chelsie": 43},
            audio_token_id=TOKENS["audio"],
            image_token_id=TOKENS["image"],
            video_token_id=TOKENS["video"],
            vision_start_token_id=TOKENS["vision_start"],
            audio_start_token_id=TOKENS["audio_start"],
            position_id_per_seconds=25,
            spatial_merge_size=2,
        ),
        code2wav_config=dict(
            codebook_size=32,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=4,
            sliding_window=8,
            intermediate_size=64,
            num_hidden_layers=1,
            num_quantizers=4,
            upsample_rates=[8, 5, 4, 3],
            upsampling_ratios=[2, 2],
            decoder_dim=32,
            max_position_embeddings=4096,
        ),
        enable_audio_output=True,
        im_start_token_id=TOKENS["im_start"],
        im_end_token_id=TOKENS["im_end"],
        tts_pad_token_id=TOKENS["tts_pad"],
        tts_bos_token_id=TOKENS["tts_text_bos"],
        tts_eos_token_id=TOKENS["tts_text_eod"],
        system_token_id=TOKENS["system"],
        user_token_id=TOKENS["user"],
        assistant_token_id=TOKENS["assistant"],
    )


def _model_class(family: str) -> Any:
    import transformers

    if family == QWEN25:
        return transformers.Qwen2_5OmniForConditionalGeneration
    if family == QWEN3:
        return transformers.Qwen3OmniMoeForConditionalGeneration
    raise ValueError(f"unknown family {family!r}")


def _build(directory: Path, family: str, config: Any) -> Path:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = _model_class(family)(config)
    _initialize_talker_experts(model)
    model.save_pretrained(directory)
    _save_processor(directory, family)
    return directory


def _initialize_talker_experts(model: Any) -> None:
    """Upstream quirk: Qwen3-Omni's talker MoE experts (3-D parameters) are left as torch.empty
    by the model's own init, so they hold whatever memory held: zeros in a fresh process, NaN
    after other models have come and gone. Give them seeded random values."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("talker.") and ".mlp.experts." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


def build_qwen25_omni(directory: Path) -> Path:
    """Build, save and return a tiny random Qwen2.5-Omni checkpoint directory."""
    import torch

    _build(directory, QWEN25, qwen25_config())
    # Speakers are read only from spk_dict.pt (from_pretrained raises OSError without it).
    # cond is [1, enc_emb_dim], ref_mel is [1, T, mel_dim]; bos_token must fit the thinker vocab.
    gen = torch.Generator().manual_seed(SEED)
    speakers = {
        name: {
            "bos_token": TOKENS["tts_text_bos_single"],
            "cond": torch.randn(1, 16, generator=gen),
            "ref_mel": torch.randn(1, 30, 16, generator=gen),
        }
        for name in QWEN25_SPEAKERS
    }
    torch.save(speakers, directory / "spk_dict.pt")
    return directory


def build_qwen3_omni(directory: Path) -> Path:
    """Build, save and return a tiny random Qwen3-Omni (MoE) checkpoint directory."""
    return _build(directory, QWEN3, qwen3_config())


def build_qwen3_thinking(directory: Path) -> Path:
    """A tiny Qwen3-Omni without a talker, standing in for the Thinking checkpoint (which has
    none); name the directory ``...-Thinking`` so the engine sees what it is."""
    config = qwen3_config()
    config.enable_audio_output = False
    return _build(directory, QWEN3, config)


def build_tiny(directory: Path, family: str) -> Path:
    if family == QWEN25:
        return build_qwen25_omni(directory)
    if family == QWEN3:
        return build_qwen3_omni(directory)
    raise ValueError(f"unknown family {family!r}")


def load_processor(directory: Path, family: str) -> Any:
    """The processor, as the engine builds it."""
    from omniserve.engines.hf.loader import build_processor

    return build_processor(directory, family)


def load_tiny(
    directory: Path, family: str, *, loading_info: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """Load (model, processor) through from_pretrained: float32, CPU, eval mode.

    If ``loading_info`` is given, it is filled with from_pretrained's loading info
    (missing_keys, unexpected_keys, ...).
    """
    import torch

    cls = _model_class(family)
    if family == QWEN25:
        # Upstream bug: Qwen2_5OmniForConditionalGeneration.from_pretrained calls
        # model.load_speakers() on the (model, info) tuple when output_loading_info=True.
        # Run the base PreTrainedModel.from_pretrained it wraps, then its one extra step.
        model, info = super(cls, cls).from_pretrained(
            directory, dtype=torch.float32, output_loading_info=True
        )
        model.load_speakers(str(directory / "spk_dict.pt"))
    else:
        model, info = cls.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    if loading_info is not None:
        loading_info.update(info)
    if family == QWEN3 and getattr(model, "has_talker", False):
        # Upstream quirk: with audio input + audio output the talker's get_rope_index reads
        # talker.config.audio_config, which Qwen3OmniMoeTalkerConfig lacks.
        model.talker.config.audio_config = model.config.thinker_config.audio_config
    model.eval()
    return model, load_processor(directory, family)


def generate_kwargs(family: str, *, audio: bool = True) -> dict[str, Any]:
    """Extra generate() arguments the tiny vocabularies need.

    ``generation_mode="text"`` is the text-only switch both families accept.
    """
    kwargs: dict[str, Any] = {}
    if family == QWEN25:
        if audio:
            kwargs["talker_eos_token_id"] = [QWEN25_TALKER_EOS]  # default [8292, 8294]
    elif family == QWEN3:
        kwargs["thinker_eos_token_id"] = TOKENS["im_end"]  # default 151645
    else:
        raise ValueError(f"unknown family {family!r}")
    if not audio:
        kwargs["generation_mode"] = "text"
    return kwargs


def media_inputs(inputs: dict[str, Any], family: str, *, audio: bool) -> dict[str, Any]:
    """Processor output → generate() kwargs.

    Upstream quirk: with image input and audio output, the top-level generate forwards
    ``pixel_values`` to the talker, which rejects it; ``thinker_pixel_values`` reaches only the
    thinker.
    """
    out = dict(inputs)
    if audio and "pixel_values" in out:
        out["thinker_pixel_values"] = out.pop("pixel_values")
    return out
