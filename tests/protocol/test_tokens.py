"""The Qwen BPE: the vendor's prompt counts, plain-text specials, streaming pieces, caching."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from omniserve.tokens import (
    IM_END,
    IM_START,
    QwenTokenizer,
    TokenizerUnavailable,
    default_ranks_file,
    get_tokenizer,
)

TOK = get_tokenizer()

MIXED = (
    "héllo wörld 你好🙂👍🏽 naïve café señor ñ — ok\n"
    "日本語のテキスト、한국어 문장, Ελληνικά, русский текст.\n"
    "𠀀𪚥 龘 👨‍👩‍👧‍👦 e\u0301 tab\there  \r\n end"
)


def test_vendor_prompt_counts() -> None:
    """Text-only "你是谁？" bills 11 prompt tokens; without the full-width mark, 10."""
    assert TOK.count_chat([("user", "你是谁？")]) == 11
    assert TOK.count_chat([("user", "你是谁")]) == 10


def test_chat_count_is_the_chatml_template() -> None:
    """The count equals the whole ChatML prompt encoded with its specials as single tokens."""
    turns = [("system", "Be brief."), ("user", "Hello there"), ("assistant", "Hi"), ("user", "?")]
    prompt = "".join(f"{IM_START}{role}\n{content}{IM_END}\n" for role, content in turns)
    prompt += f"{IM_START}assistant\n"
    segments = re.split(f"({re.escape(IM_START)}|{re.escape(IM_END)})", prompt)
    expected = sum(1 if s in (IM_START, IM_END) else TOK.count(s) for s in segments)
    assert TOK.count_chat(turns) == expected


def test_chat_count_of_no_turns_is_the_opened_assistant_turn() -> None:
    assert TOK.count_chat([]) == 1 + TOK.count("assistant") + TOK.count("\n")


def test_count() -> None:
    assert TOK.count("") == 0
    assert TOK.count("hello") == 1
    assert TOK.count("hello world") == 2
    assert TOK.count("你是谁？") == len(TOK.encode("你是谁？"))
    assert TOK.count(MIXED) == len(TOK.encode(MIXED))


@pytest.mark.parametrize(
    "text",
    ["", "a", "hello world", "你是谁？", MIXED, "  leading and trailing  ", "1234567890", "\n\n"],
)
def test_encode_decode_round_trip(text: str) -> None:
    tokens = TOK.encode(text)
    assert all(isinstance(t, int) for t in tokens)
    assert TOK.decode(tokens) == text
    assert TOK.decode(iter(tokens)) == text
    assert b"".join(TOK.token_bytes(t) for t in tokens) == text.encode("utf-8")


def test_digits_are_single_tokens() -> None:
    assert len(TOK.encode("2025")) == 4


@pytest.mark.parametrize("special", ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|extra_0|>"])
def test_special_token_lookalikes_are_plain_text(special: str) -> None:
    tokens = TOK.encode(special)
    assert len(tokens) > 1
    assert all(t < 151_643 for t in tokens)
    assert TOK.decode(tokens) == special


def test_special_ids() -> None:
    assert TOK.im_start == 151_644
    assert TOK.im_end == 151_645
    assert 151_645 not in TOK.encode("<|im_end|>")
    assert TOK.decode([151_643, 151_644, 151_645]) == "<|endoftext|><|im_start|><|im_end|>"


@pytest.mark.parametrize(
    "text",
    [
        MIXED,
        "你好，世界！こんにちは。안녕하세요.",
        "🙂🙃😉👍🏽🇨🇳🇫🇷",
        "àéîõü ÀÉÎÕÜ çñß œæ ø å",
        "𠀀𠀁𠀂 𪚥𪚥",
        "plain ascii only",
        "",
    ],
)
def test_stream_pieces_join_back_exactly(text: str) -> None:
    pieces = list(TOK.stream_pieces(text))
    assert "".join(piece for piece, _ in pieces) == text
    assert sum(n for _, n in pieces) == TOK.count(text)
    assert all(n >= 1 for _, n in pieces)
    assert all(piece for piece, _ in pieces)
    assert all("\ufffd" not in piece for piece, _ in pieces)


def test_stream_pieces_merge_tokens_that_split_a_character() -> None:
    text = "𠀀𪚥 ñ"
    pieces = list(TOK.stream_pieces(text))
    assert any(n > 1 for _, n in pieces), pieces
    assert len(pieces) < TOK.count(text)


def test_get_tokenizer_caches() -> None:
    assert get_tokenizer() is TOK
    assert get_tokenizer(None) is TOK


def test_get_tokenizer_caches_per_file() -> None:
    path = default_ranks_file()
    first = get_tokenizer(path)
    assert get_tokenizer(path) is first
    assert first.count_chat([("user", "你是谁？")]) == 11


def test_default_ranks_file_is_the_dashscope_one() -> None:
    path = default_ranks_file()
    assert path.name == "qwen.tiktoken"
    assert path.parent.name == "resources"
    assert path.is_file()


def test_missing_ranks_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.tiktoken"
    with pytest.raises(TokenizerUnavailable, match="cannot read Qwen BPE ranks"):
        QwenTokenizer(missing)
    with pytest.raises(TokenizerUnavailable):
        get_tokenizer(missing)


def test_unreadable_ranks_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("this is not a ranks file\n", encoding="utf-8")
    with pytest.raises(TokenizerUnavailable, match=str(bad)):
        QwenTokenizer(bad)
