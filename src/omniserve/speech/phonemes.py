"""Text as the phonemes Kokoro-82M reads: Mandarin through misaki's pinyin G2P, English,
French, Spanish, Italian and Brazilian Portuguese through espeak-ng's IPA.

Kokoro was trained on misaki's phonemes. For Mandarin that is pinyin (jieba words, pypinyin
readings, cn2an for numbers) written as IPA with tone arrows. For English, espeak-ng's IPA is
close, once its diphthongs, affricates and American r-colouring are written the way misaki
writes them (``aɪ`` is ``I``, ``dʒ`` is ``ʤ``, a flap is ``T``); the other four languages were
trained on espeak-ng's IPA itself, with affricates and diphthongs as single symbols. espeak-ng
is GPL-3, so, as for speech, it only ever runs as a separate program. It drops punctuation,
which Kokoro needs for its pauses and intonation, so each clause is read separately and its
marks put back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
import warnings
from collections.abc import Callable

from omniserve.speech.children import ChildProcesses
from omniserve.speech.priority import PrioritySemaphore

# Kokoro-82M v1.0's phoneme vocabulary (the ``vocab`` of the model's config.json), as runs of
# symbols with consecutive ids: (first id, symbols).
_VOCAB_RUNS = (
    (1, ";:,.!?"),
    (9, '—…"()“” \u0303ʣʥʦʨᵝ\uab67AI'),
    (31, "O"),
    (33, "Q"),
    (35, "ST"),
    (39, "W"),
    (41, "Yᵊabcdef"),
    (50, "hijklmnopqrstuvwxyzɑɐɒæ"),
    (75, "βɔɕç"),
    (80, "ɖðʤə"),
    (85, "ɚɛɜ"),
    (90, "ɟ"),
    (92, "ɡ"),
    (99, "ɥ"),
    (101, "ɨɪʝ"),
    (110, "ɯɰŋɳɲɴø"),
    (118, "ɸθœ"),
    (123, "ɹ"),
    (125, "ɾɻ"),
    (128, "ʁɽʂʃʈʧ"),
    (135, "ʊʋ"),
    (138, "ʌɣɤ"),
    (142, "χʎ"),
    (147, "ʒʔ"),
    (156, "ˈˌː"),
    (162, "ʰ"),
    (164, "ʲ"),
    (169, "↓"),
    (171, "→↗↘"),
    (177, "ᵻ"),
)
VOCAB: dict[str, int] = {
    symbol: first + offset
    for first, symbols in _VOCAB_RUNS
    for offset, symbol in enumerate(symbols)
}

# espeak-ng voices whose sentences Kokoro reads, as the language of their phonemes.
KOKORO_LANGUAGES: dict[str, str] = {
    "cmn-latn-pinyin": "zh",
    "cmn": "zh",
    "en-us": "en",
    "en": "en",
    "fr-fr": "fr",
    "fr": "fr",
    "es": "es",
    "it": "it",
    "pt-br": "pt",
}
# The espeak-ng voice that writes each language's IPA (Latin words in Chinese are English).
_ESPEAK_VOICES = {
    "zh": "en-us",
    "en": "en-us",
    "fr": "fr-fr",
    "es": "es",
    "it": "it",
    "pt": "pt-br",
}

# espeak-ng's American IPA (phonemes of several letters tied with "^") as misaki writes it,
# in the order applied: longer sequences first.
_ENGLISH_IPA = (
    ("a^ɪ", "I"),
    ("a^ʊ", "W"),
    ("e^ɪ", "A"),
    ("o^ʊ", "O"),
    ("ɔ^ɪ", "Y"),
    ("d^ʒ", "ʤ"),
    ("t^ʃ", "ʧ"),
    ("ə^l", "ᵊl"),
    ("^", ""),
    ("ɜːɹ", "ɜɹ"),
    ("ɜː", "ɜɹ"),
    ("ɚ", "əɹ"),
    ("ɪə", "iə"),
    ("ɐ", "ə"),
    ("r", "ɹ"),
    ("x", "k"),
    ("ç", "k"),
    ("ɬ", "l"),
    ("ʲ", ""),
    ("\u0303", ""),
    ("ː", ""),
    ("o", "ɔ"),  # espeak-ng before 1.52 writes "four" with o where misaki has ɔ
    ("ɾ", "T"),  # the American flap of "butter"
    ("ʔ", "t"),  # the glottal stop of "button"
)
# Other languages' IPA, as Kokoro was trained on it.
_OTHER_IPA = (
    ("a^ɪ", "I"),
    ("a^ʊ", "W"),
    ("d^z", "ʣ"),
    ("d^ʒ", "ʤ"),
    ("e^ɪ", "A"),
    ("o^ʊ", "O"),
    ("ə^ʊ", "Q"),
    ("s^s", "S"),
    ("t^s", "ʦ"),
    ("t^ʃ", "ʧ"),
    ("ɔ^ɪ", "Y"),
    ("^", ""),
    ("-", ""),  # French liaison marks
)
_SYLLABIC = re.compile("(\\S)\u0329")  # "n̩" is "ᵊn"
# espeak-ng marks a word it reads in another language: "(^e^n)wiːkˈɛnd(^f^r)".
_SWITCH = re.compile(r"\([^)]*\)")

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_RUN = re.compile(f"[{_HAN}]+")
# Latin words inside Chinese text ("GPT-4", "OpenAI"), read in English.
_LATIN_RUN = re.compile(r"[A-Za-z][A-Za-z0-9'’\-.]*(?:[ \t]+[A-Za-z][A-Za-z0-9'’\-.]*)*")
# Marks that end a clause: followed by space or the end, so "3.5" and "e.g" stay whole.
_CLAUSE_END = re.compile(r"(?<=[,.;:!?…])[\"'”’)\]]*\s+")
_CLAUSE = re.compile(r"(.*?)([,.;:!?…]*)[\"'”’)\]]*", re.DOTALL)
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_MARK = re.compile(r" (?=[,.;:!?…])")
# Words whose "." ends no clause.
_ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "vs.", "e.g.", "i.e.", "cf."}
)


class PhonemeError(Exception):
    """Text that could not be turned into phonemes (espeak-ng failing or missing)."""


class Phonemizer:
    """Writes sentences in Kokoro's phonemes; ``load`` (blocking) before the first Mandarin.

    At most ``max_concurrency`` espeak-ng processes run at once, most urgent first.
    """

    def __init__(self, espeak_path: str, max_concurrency: int) -> None:
        self._espeak = espeak_path
        self._slots = PrioritySemaphore(max_concurrency)
        self._children = ChildProcesses()
        self._mandarin: Callable[[str], tuple[str, object]] | None = None

    @property
    def loaded(self) -> bool:
        return self._mandarin is not None

    def load(self) -> None:
        """Imports misaki's Mandarin G2P and loads jieba's dictionary (about half a second).

        Raises ``ImportError`` when the ``voice`` extra is missing."""
        if self._mandarin is not None:
            return
        # jieba imports pkg_resources where setuptools still has it, which warns.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import jieba
            from misaki.zh import ZHG2P

        jieba.setLogLevel(logging.WARNING)  # it logs each dictionary load on stderr
        jieba.initialize()
        self._mandarin = ZHG2P()

    async def phonemes(self, text: str, language: str, deadline: float) -> str:
        """``text`` in Kokoro's phonemes, symbols outside its vocabulary left out. ``language``
        is one of ``KOKORO_LANGUAGES``' values; Han characters are read in Mandarin and, in
        Chinese text, Latin words in English."""
        text = unicodedata.normalize("NFKC", text)
        foreign = _LATIN_RUN if language == "zh" else _HAN_RUN
        parts: list[tuple[bool, str]] = []  # (in the sentence's own language, text)
        end = 0
        for match in foreign.finditer(text):
            parts.append((True, text[end : match.start()]))
            parts.append((False, match.group()))
            end = match.end()
        parts.append((True, text[end:]))
        said = await asyncio.gather(
            *(
                self._mandarin_async(part)
                if (language == "zh") == own
                else self._espeak_phonemes(part, _ESPEAK_VOICES[language], deadline)
                for own, part in parts
                if part.strip()
            )
        )
        return _SPACE_BEFORE_MARK.sub("", _SPACES.sub(" ", " ".join(said))).strip()

    async def close(self) -> None:
        """Kills espeak-ng processes still running."""
        self._children.kill_all()

    async def _mandarin_async(self, text: str) -> str:
        # jieba and pypinyin take a few milliseconds a sentence: off the event loop.
        return await asyncio.to_thread(self.mandarin, text)

    def mandarin(self, text: str) -> str:
        """Mandarin ``text`` in Kokoro's phonemes (blocking)."""
        if self._mandarin is None:
            self.load()
        assert self._mandarin is not None
        phonemes, _ = self._mandarin(text)
        return _in_vocab(phonemes)

    async def _espeak_phonemes(self, text: str, voice: str, deadline: float) -> str:
        clauses = [_CLAUSE.fullmatch(part) for part in _clauses(text)]
        pairs = [(m.group(1).strip(), m.group(2)) for m in clauses if m is not None]
        said = await asyncio.gather(
            *(self._espeak_ipa(words, voice, deadline) for words, _ in pairs if words)
        )
        spoken = iter(said)
        out = [(next(spoken) if words else "") + marks for words, marks in pairs]
        return " ".join(part for part in out if part)

    async def _espeak_ipa(self, text: str, voice: str, deadline: float) -> str:
        async with self._slots.slot(deadline):
            ipa = await self._run(["-q", "--ipa", "--tie=^", "-v", voice], text.encode())
        return espeak_phonemes(ipa.decode(errors="replace"), voice)

    async def _run(self, args: list[str], stdin: bytes) -> bytes:
        """espeak-ng's stdout; the process is killed and reaped if the caller is cancelled."""
        try:
            status, out, err = await self._children.run([self._espeak, *args], stdin)
        except OSError as exc:
            raise PhonemeError(f"cannot run {self._espeak!r} ({exc.strerror or exc})") from exc
        if status != 0:
            message = err.decode(errors="replace").strip() or "no message"
            raise PhonemeError(f"{self._espeak} exited with status {status}: {message}")
        return out


def _clauses(text: str) -> list[str]:
    """``text`` cut after each clause mark that ends a clause."""
    clauses: list[str] = []
    for part in _CLAUSE_END.split(text):
        if clauses and clauses[-1].rsplit(" ", 1)[-1].lower() in _ABBREVIATIONS:
            clauses[-1] = f"{clauses[-1]} {part.strip()}"
        else:
            clauses.append(part.strip())
    return clauses


def espeak_phonemes(ipa: str, voice: str) -> str:
    """The IPA espeak-ng's ``voice`` writes (``-q --ipa --tie=^``) in Kokoro's phonemes."""
    ipa = _SPACES.sub(" ", _SWITCH.sub("", ipa)).strip()
    table: tuple[tuple[str, str], ...] = _OTHER_IPA
    if voice.startswith("en"):
        ipa = _SYLLABIC.sub(r"ᵊ\1", ipa)
        table = _ENGLISH_IPA
    for espeak, kokoro in table:
        ipa = ipa.replace(espeak, kokoro)
    return _in_vocab(ipa)


def _in_vocab(phonemes: str) -> str:
    return "".join(ch for ch in phonemes if ch in VOCAB)
