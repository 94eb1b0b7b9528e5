"""JSON for large request bodies, read in steps that each hold the interpreter lock briefly.

``json.loads`` is one C call: on a 60 MB body it holds the interpreter lock, and so the event
loop and every other thread, for 50-100 ms, however it is run. A large body that is legitimate
is a few long strings (media as data URLs) in a small structure, so ``loads`` lifts every long
string out first (finding its ends with ``bytes.find``), parses the small structure that
remains in one call, and puts the strings back, each decoded a slice at a time. Text besides
media is bounded (``MAX_TEXT``): no longer text can fit a model's input, so a longer string
that is not media (a media URL, audio data or a frame of a frame list) is refused before it is
decoded, and so is a remainder that large.

The result is what ``json.loads(body.decode("utf-8"))`` returns, and invalid bodies raise what
it raises (``JSONDecodeError`` with the body's line and column, ``UnicodeDecodeError``).
"""

from __future__ import annotations

import codecs
import json
import re
import secrets
from collections.abc import Callable
from typing import Any

# Bodies up to this size are parsed in one call (about a millisecond).
SMALL_BODY = 2 * 1024 * 1024
# Strings at least this long are lifted out of the body before parsing.
LONG_STRING = 64 * 1024
# Text a large body may hold besides media, in one string or in what remains besides the long
# strings; more cannot be a valid request.
MAX_TEXT = 8 * 1024 * 1024
# Where media are: the values of these keys, and the items of a frame list ("video").
_MEDIA_KEYS = ("url", "data")
_FRAME_LIST = "video"
# A long string with escape sequences is decoded in one call, so its length is bounded; base64
# media have none (a "\/" as some encoders write it is taken apart separately).
MAX_ESCAPED = 8 * 1024 * 1024
_SLICE = 4 * 1024 * 1024
_CONTROL = re.compile(rb"[\x00-\x1f]")


class TooMuchOutsideMedia(ValueError):
    """The body holds more than ``MAX_TEXT`` bytes of text besides media."""


class LongEscapedString(ValueError):
    """A string longer than ``MAX_ESCAPED`` holds escape sequences other than ``\\/``."""


def loads(body: bytes | bytearray, *, parse_constant: Callable[[str], Any]) -> Any:
    """``json.loads(body.decode("utf-8"))``, without any long step for large bodies."""
    if len(body) <= SMALL_BODY:
        return json.loads(body.decode("utf-8"), parse_constant=parse_constant)
    return _Lifted(body).parse(parse_constant)


class _Lifted:
    def __init__(self, body: bytes | bytearray) -> None:
        self.body = body
        self.nonce = secrets.token_hex(8)
        # placeholder -> where the string it stands for lies in the body (between its quotes)
        self.strings: dict[str, tuple[int, int]] = {}
        # The remainder's pieces, each with where it starts in the remainder and in the body.
        self.pieces: list[tuple[int, int, bytes]] = []

    def parse(self, parse_constant: Callable[[str], Any]) -> Any:
        remainder = self._lift()
        try:
            text = remainder.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(exc) from None
        try:
            data = json.loads(text, parse_constant=parse_constant)
        except json.JSONDecodeError as exc:
            at = self._in_body(len(text[: exc.pos].encode("utf-8")))
            raise _error_at(exc.msg, self.body, at) from None
        return self._restore(data) if self.strings else data

    def _lift(self) -> bytes:
        """The body with every long string replaced by a short placeholder string."""
        body, pos, scan, out = self.body, 0, 0, 0
        while True:
            opening = body.find(b'"', scan)
            if opening < 0:
                break
            closing = _closing_quote(body, opening + 1)
            if closing < 0:
                break  # unterminated: the parser says so, and where
            if closing - opening - 1 >= LONG_STRING:
                key = f"\x00lifted:{self.nonce}:{len(self.strings)}"
                self.strings[key] = (opening + 1, closing)
                out = self._piece(out, pos, body[pos:opening])
                out = self._piece(out, opening, json.dumps(key).encode())
                pos = closing + 1
            scan = closing + 1
            if out + scan - pos > MAX_TEXT:
                raise TooMuchOutsideMedia()
        out = self._piece(out, pos, body[pos:])
        if out > MAX_TEXT:
            raise TooMuchOutsideMedia()
        return b"".join(piece for _, _, piece in self.pieces)

    def _piece(self, out: int, at: int, data: bytes | bytearray) -> int:
        """Appends ``data`` (from byte ``at`` of the body) to the remainder; its new length."""
        if data:
            self.pieces.append((out, at, bytes(data)))
        return out + len(data)

    def _in_body(self, offset: int) -> int:
        """Where an offset of the remainder lies in the body."""
        for out, at, piece in reversed(self.pieces):
            if out <= offset:
                return at + min(offset - out, len(piece))
        return offset

    def _decode(self, start: int, end: int) -> str:
        """The string between two quotes of the body, decoded a slice at a time."""
        body = self.body
        if body.find(b"\\", start, end) >= 0:
            return self._unescape(start, end)
        control = search(_CONTROL, body, start, end)
        if control >= 0:
            raise _error_at("Invalid control character at", body, control)
        decoder = codecs.getincrementaldecoder("utf-8")()
        parts = []
        for pos in range(start, end, _SLICE):
            try:
                parts.append(decoder.decode(body[pos : min(pos + _SLICE, end)], final=False))
            except UnicodeDecodeError as exc:
                raise _not_utf8(exc) from None
        try:
            parts.append(decoder.decode(b"", final=True))
        except UnicodeDecodeError as exc:
            raise _not_utf8(exc) from None
        return "".join(parts)

    def _unescape(self, start: int, end: int) -> str:
        body = self.body
        slashes = _count(body, b"\\/", start, end)
        if slashes and slashes == _count(body, b"\\", start, end):
            # Only "\/" (as PHP and others write "/"): drop the backslashes, slice by slice.
            # A slice that ends between the two bytes of a "\/" is taken one byte shorter.
            parts, pos = [], start
            while pos < end:
                cut = min(pos + _SLICE, end)
                if cut < end and body[cut - 1 : cut] == b"\\":
                    cut -= 1
                parts.append(body[pos:cut].replace(b"\\/", b"/"))
                pos = cut
            plain = b"".join(parts)
            return _Lifted(plain)._decode(0, len(plain))
        if end - start > MAX_ESCAPED:
            raise LongEscapedString()
        try:
            value = json.loads(body[start - 1 : end + 1])
        except json.JSONDecodeError as exc:
            raise _error_at(exc.msg, body, start - 1 + exc.pos) from None
        assert isinstance(value, str)
        return value

    def _restore(self, data: Any) -> Any:
        """``data`` with every placeholder (a value or a key) replaced by its string."""
        stack: list[tuple[Any, bool]] = [(data, False)]  # (a container, whether it is frames)
        while stack:
            node, frames = stack.pop()
            if isinstance(node, dict):
                for key in [k for k in node if k in self.strings]:
                    node[self._string(key, media=False)] = node.pop(key)
                for key, value in node.items():
                    if isinstance(value, str) and value in self.strings:
                        node[key] = self._string(value, media=key in _MEDIA_KEYS)
                    elif isinstance(value, dict | list):
                        stack.append((value, key == _FRAME_LIST))
            elif isinstance(node, list):
                for i, value in enumerate(node):
                    if isinstance(value, str) and value in self.strings:
                        node[i] = self._string(value, media=frames)
                    elif isinstance(value, dict | list):
                        stack.append((value, False))
        if isinstance(data, str) and data in self.strings:
            return self._string(data, media=False)
        return data

    def _string(self, key: str, *, media: bool) -> str:
        start, end = self.strings[key]
        if not media and end - start > MAX_TEXT:
            raise TooMuchOutsideMedia()  # not decoded at all: it cannot be a valid request
        return self._decode(start, end)


def _closing_quote(body: bytes | bytearray, pos: int) -> int:
    """The index of the quote that ends a string starting at ``pos``, or -1."""
    while True:
        quote = body.find(b'"', pos)
        if quote < 0:
            return -1
        # Escaped when an odd number of backslashes precede it (counted a window at a time).
        run = quote
        while run > pos:
            window = max(pos, run - 4096)
            kept = len(bytes(body[window:run]).rstrip(b"\\"))
            run = window + kept
            if kept:
                break
        if (quote - run) % 2 == 0:
            return quote
        pos = quote + 1


def search(pattern: re.Pattern[bytes], body: bytes | bytearray, start: int, end: int) -> int:
    """Where ``pattern`` (whose matches are at most 16 bytes long) first matches in
    ``body[start:end]``, searched a slice at a time; -1 when nowhere."""
    for pos in range(start, end, _SLICE):
        found = pattern.search(body, pos, min(pos + _SLICE + 16, end))
        if found:
            return found.start()
    return -1


def _count(body: bytes | bytearray, sub: bytes, start: int, end: int) -> int:
    """Occurrences of ``sub`` (which cannot overlap itself) in ``body[start:end]``, counted a
    slice at a time; each slice also sees the bytes an occurrence starting in it runs into."""
    total = 0
    for pos in range(start, end, _SLICE):
        total += body.count(sub, pos, min(pos + _SLICE + len(sub) - 1, end))
    return total


def _not_utf8(exc: UnicodeDecodeError) -> UnicodeDecodeError:
    """The same failure, without a copy of a large body inside it."""
    return UnicodeDecodeError(exc.encoding, b"", 0, 0, exc.reason)


def _error_at(msg: str, body: bytes | bytearray, at: int) -> json.JSONDecodeError:
    """The error ``json`` would raise at byte ``at`` of the body (line and column in it)."""
    line = _count(body, b"\n", 0, at) + 1
    start = body.rfind(b"\n", 0, at) + 1
    column = len(bytes(body[start:at]).decode("utf-8", "replace")) + 1
    error = json.JSONDecodeError(msg, "", 0)
    error.lineno, error.colno, error.pos = line, column, at
    error.args = (f"{msg}: line {line} column {column} (char {at})",)
    return error
