"""Exact text token counts with the real Qwen BPE vocabulary.

The ranks file is the one the ``dashscope`` package ships (``resources/qwen.tiktoken``); the split
pattern and special-token ids are the Qwen tokenizer's. Prompts are counted through the ChatML
template the models use, without a default system prompt: "你是谁？" counts 11 tokens, as the
vendor bills it.
"""

from __future__ import annotations

import importlib.resources
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from omniserve.errors import StartupError

# The Qwen pre-tokenizer: contractions, letters with one leading non-letter, single digits,
# punctuation runs, newlines, whitespace.
_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
_SPECIAL_BASE = 151_643


class TokenizerUnavailable(StartupError):
    """The BPE ranks file cannot be found or read."""


def default_ranks_file() -> Path:
    try:
        ref = importlib.resources.files("dashscope") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError:
        raise TokenizerUnavailable(
            "the dashscope package (which ships qwen.tiktoken) is not installed; "
            "install it or set tokenizer_file"
        ) from None
    return Path(str(ref))


class QwenTokenizer:
    """Encodes text with the Qwen vocabulary; special tokens are recognised only in templates."""

    def __init__(self, ranks_file: Path | None = None) -> None:
        path = ranks_file or default_ranks_file()
        try:
            ranks = load_tiktoken_bpe(str(path))
        except (OSError, ValueError) as exc:
            raise TokenizerUnavailable(f"cannot read Qwen BPE ranks from {path}: {exc}") from exc
        specials = {
            tok: _SPECIAL_BASE + i
            for i, tok in enumerate((ENDOFTEXT, IM_START, IM_END, *_extras()))
        }
        self._enc = tiktoken.Encoding(
            "qwen", pat_str=_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials
        )
        # No token holds more characters than this (a character is at least one byte), so a
        # text of n characters is at least n / longest tokens: too long can be told uncounted.
        self.longest_token = max(len(token) for token in ranks)
        self.im_start = specials[IM_START]
        self.im_end = specials[IM_END]
        self._newline = self._enc.encode_ordinary("\n")

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text; special-token lookalikes in user text stay plain text."""
        return self._enc.encode_ordinary(text)

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text)) if text else 0

    def token_bytes(self, token: int) -> bytes:
        return self._enc.decode_single_token_bytes(token)

    def decode(self, tokens: Iterable[int]) -> str:
        return self._enc.decode(list(tokens))

    def fewest_tokens(self, text_length: int) -> int:
        """The fewest tokens a text of ``text_length`` characters can take."""
        return -(-text_length // self.longest_token)

    def count_chat(self, turns: Iterable[tuple[str, str]]) -> int:
        """Tokens of a ChatML prompt: each turn, then the opened assistant turn."""
        total = 0
        per_turn = 2 + 2 * len(self._newline)  # <|im_start|> role \n text <|im_end|> \n
        for role, text in turns:
            total += per_turn + self.count(role) + self.count(text)
        return total + 1 + self.count("assistant") + len(self._newline)

    def stream_pieces(self, text: str) -> Iterator[tuple[str, int]]:
        """(text, token count) per token, merging tokens that end mid-character."""
        pending, count = b"", 0
        for token in self._enc.encode_ordinary(text):
            pending += self._enc.decode_single_token_bytes(token)
            count += 1
            try:
                piece = pending.decode("utf-8")
            except UnicodeDecodeError:
                continue
            yield piece, count
            pending, count = b"", 0
        if pending:
            yield pending.decode("utf-8", errors="replace"), count


def _extras() -> tuple[str, ...]:
    return tuple(f"<|extra_{i}|>" for i in range(205))


_shared: dict[Path | None, QwenTokenizer] = {}
_lock = threading.Lock()


def get_tokenizer(ranks_file: Path | None = None) -> QwenTokenizer:
    """One tokenizer per ranks file per process (loading takes a few hundred milliseconds)."""
    with _lock:
        tok = _shared.get(ranks_file)
        if tok is None:
            tok = _shared[ranks_file] = QwenTokenizer(ranks_file)
        return tok
