"""Cuts streamed text into sentences, so speech can start before the reply is complete.

The first segment may end at a clause mark instead, once it is long enough, to bring the first
audio forward. A boundary is only confirmed when the next character arrives, so closing quotes
and repeated marks (``?!``, ``……``, ``。”``) stay with their sentence.
"""

from __future__ import annotations

# Marks that end a sentence wherever they stand.
_WIDE_ENDERS = frozenset("。！？；…｡．")
# ASCII marks end a sentence only when whitespace or CJK text follows: not "3.14", "a;b", "?q=1".
_ASCII_ENDERS = frozenset(".!?;")
_WIDE_CLAUSE = frozenset("，、：；")
_ASCII_CLAUSE = frozenset(",:")
_CLOSERS = frozenset("\"'”’」』）)]}》〉】〕")
_TRAILING = _WIDE_ENDERS | _ASCII_ENDERS | _CLOSERS
# Words whose "." is not a full stop.
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "e.g", "i.e", "cf", "fig"}
)


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return 0x2E80 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFFEF


def _is_speakable(segment: str) -> bool:
    return any(ch.isalnum() for ch in segment)


class SentenceSegmenter:
    """Feeds on text deltas and returns whole sentences as soon as they end."""

    def __init__(self, first_clause_chars: int = 8) -> None:
        self._first_clause_chars = first_clause_chars
        self._buffer = ""
        self._first = True

    def feed(self, text: str) -> list[str]:
        """The segments that ``text`` completes, in order; the rest waits for more text."""
        self._buffer += text
        segments: list[str] = []
        while (end := self._find_end()) is not None:
            segment, self._buffer = self._buffer[:end].strip(), self._buffer[end:]
            if _is_speakable(segment):
                segments.append(segment)
                self._first = False
        return segments

    def flush(self) -> str | None:
        """What is left once the text is complete; ``None`` when nothing speakable is."""
        rest, self._buffer = self._buffer.strip(), ""
        if not _is_speakable(rest):
            return None
        self._first = False
        return rest

    def _find_end(self) -> int | None:
        """The end of the first confirmed segment in the buffer, or ``None``."""
        buf = self._buffer
        n = len(buf)
        for i, ch in enumerate(buf):
            if ch == "\n":
                return i + 1
            ender = ch in _WIDE_ENDERS or ch in _ASCII_ENDERS
            clause = self._first and (ch in _WIDE_CLAUSE or ch in _ASCII_CLAUSE)
            if not ender and not (clause and self._long_enough(buf[:i])):
                continue
            if ch == "." and self._is_abbreviation(buf[:i]):
                continue
            end = i + 1
            while end < n and buf[end] in _TRAILING:
                end += 1
            if end == n:
                return None  # a closing quote or another mark may still come
            ascii_mark = ch in _ASCII_ENDERS or ch in _ASCII_CLAUSE
            if ascii_mark and not (buf[end].isspace() or _is_cjk(buf[end])):
                continue
            return end
        return None

    def _long_enough(self, head: str) -> bool:
        return sum(not c.isspace() for c in head) >= self._first_clause_chars

    @staticmethod
    def _is_abbreviation(head: str) -> bool:
        word = head.rsplit(None, 1)[-1] if head.strip() else ""
        return word.lower().lstrip("(\"'") in _ABBREVIATIONS
