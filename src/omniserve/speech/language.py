"""Which of the ten output languages a sentence is in, to pick the voice that reads it.

Script first (Han, kana, Hangul, Cyrillic, Latin), then, for Latin text, accented letters and a
few stop words. It runs once per spoken sentence, so it is a single pass with no model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from omniserve.catalog import Language

# CJK characters carry about a word each; letters of alphabetic scripts much less.
_CJK_WEIGHT = 3


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_LATIN = (Language.EN, Language.FR, Language.DE, Language.IT, Language.ES, Language.PT)

_STOP_WORDS: dict[Language, frozenset[str]] = {
    Language.EN: _words(
        "the and is are was were of to in it that this with for you have has be not on at what "
        "which will would can could i we they he she my your do does there from by an or but if "
        "how all been their about just so than then them when who yes thanks thank please hello "
        "good very here our us me him her its these those some any more now today"
    ),
    Language.FR: _words(
        "le la les des du un une et est sont je tu il elle nous vous ils elles pas ne que qui "
        "pour dans sur avec ce cette ces mais ou au aux c j qu l d n très être avoir fait on se "
        "sa ses leur y en à où plus comme aussi aujourd hui merci bonjour oui toi moi mon ma "
        "mes ton ta tes notre votre suis chez toujours beaucoup"
    ),
    Language.DE: _words(
        "der die das und ist sind ich du er sie wir ihr nicht ein eine einen einem mit für auf "
        "den dem des zu von im auch es sich wie was aber oder heute sehr noch nach bei wird "
        "haben hat kann uns wenn dass so danke bitte guten nein ja mein dein habe bin bist dir "
        "mir mich dich gut hier jetzt immer"
    ),
    Language.IT: _words(
        "il lo la gli le di del della dello delle dei che è e un una per non sono ho ha con nel "
        "nella questo questa mi ti ci si come anche più ma oggi molto alla al degli sul sulla "
        "cosa sei siamo hai abbiamo io lei noi voi loro grazie ciao dove quando mio mia tuo tua "
        "ancora tutto tutti bene ecco qui"
    ),
    Language.ES: _words(
        "el la los las de del que y en un una es son por para con no se su sus lo muy pero como "
        "más está están hoy yo tú nosotros al le les hay esto esta gracias muchas mucho muchos "
        "tu usted ustedes donde cuando también bien bueno buenos todo todos ella ellos mi mis "
        "tiene tengo hola ya qué cómo dónde porque sí aquí"
    ),
    Language.PT: _words(
        "o a os as de do da dos das que e em um uma é são não com para por no na nos nas se "
        "mais muito você eu hoje está também mas ao pelo pela isso esta este obrigado obrigada "
        "vocês onde quando tudo todos bem bom olá sim aqui ele ela eles tem tenho meu minha seu "
        "sua porque já então"
    ),
}

# Letters that (nearly) only some of the Latin-script languages use, with their weight.
_LETTER_HINTS: dict[str, tuple[tuple[Language, float], ...]] = {
    "ß": ((Language.DE, 3),),
    "ä": ((Language.DE, 2),),
    "ö": ((Language.DE, 2),),
    "ü": ((Language.DE, 2),),
    "ñ": ((Language.ES, 3),),
    "¿": ((Language.ES, 3),),
    "¡": ((Language.ES, 3),),
    "ã": ((Language.PT, 3),),
    "õ": ((Language.PT, 3),),
    "ç": ((Language.FR, 1), (Language.PT, 1)),
    "œ": ((Language.FR, 3),),
    "î": ((Language.FR, 2),),
    "û": ((Language.FR, 2),),
    "ë": ((Language.FR, 2),),
    "ï": ((Language.FR, 2),),
    "ê": ((Language.FR, 1), (Language.PT, 1)),
    "â": ((Language.FR, 1), (Language.PT, 1)),
    "ô": ((Language.FR, 1), (Language.PT, 1)),
    "è": ((Language.FR, 1), (Language.IT, 1)),
    "ù": ((Language.FR, 1), (Language.IT, 1)),
    "à": ((Language.FR, 1), (Language.IT, 1), (Language.PT, 0.5)),
    "ì": ((Language.IT, 2),),
    "ò": ((Language.IT, 2),),
    "é": ((Language.FR, 0.5), (Language.ES, 0.5), (Language.PT, 0.5), (Language.IT, 0.25)),
    "á": ((Language.ES, 1), (Language.PT, 1)),
    "í": ((Language.ES, 1), (Language.PT, 1)),
    "ó": ((Language.ES, 1), (Language.PT, 1)),
    "ú": ((Language.ES, 1), (Language.PT, 1)),
}

_WORD = re.compile(r"[^\W\d_]+")


def detect_language(
    text: str,
    allowed: Sequence[Language] | None = None,
    default: Language = Language.EN,
) -> Language:
    """The language ``text`` is written in, kept within ``allowed`` when that is given.

    Outside ``allowed``, Han text falls back to Chinese, anything else to ``default``, and
    failing both to ``allowed[0]``.
    """
    han = kana = hangul = cyrillic = latin = 0
    for ch in text:
        code = ord(ch)
        if code < 0x80:
            latin += ch.isalpha()
        elif _is_han(code):
            han += 1
        elif (0x3041 <= code <= 0x30FF and code != 0x30FB) or 0x31F0 <= code <= 0x31FF:
            kana += 1  # U+30FB (・) also separates foreign names in Chinese
        elif 0xFF66 <= code <= 0xFF9D:
            kana += 1
        elif 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
            hangul += 1
        elif 0x0400 <= code <= 0x04FF:
            cyrillic += 1
        elif 0xC0 <= code <= 0x24F:
            latin += ch.isalpha()
    scores = {
        "cjk": (han + kana) * _CJK_WEIGHT,
        "hangul": hangul * _CJK_WEIGHT,
        "cyrillic": cyrillic,
        "latin": latin,
    }
    script = max(scores, key=lambda s: scores[s])  # ties go to the earlier script
    if scores[script] == 0:
        detected = default
    elif script == "cjk":
        detected = Language.JA if kana else Language.ZH
    elif script == "hangul":
        detected = Language.KO
    elif script == "cyrillic":
        detected = Language.RU
    else:
        detected = _latin_language(text)
    if allowed is None or detected in allowed:
        return detected
    if not allowed:
        raise ValueError("allowed languages must not be empty")
    if han and Language.ZH in allowed:
        return Language.ZH
    return default if default in allowed else allowed[0]


def _is_han(code: int) -> bool:
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0xF900 <= code <= 0xFAFF
        or 0x20000 <= code <= 0x3134F
    )


def _latin_language(text: str) -> Language:
    """English, French, German, Italian, Spanish or Portuguese; English when in doubt."""
    lowered = text.lower()
    scores = dict.fromkeys(_LATIN, 0.0)
    for ch in lowered:
        for language, weight in _LETTER_HINTS.get(ch, ()):
            scores[language] += weight
    for word in _WORD.findall(lowered):
        for language in _LATIN:
            if word in _STOP_WORDS[language]:
                scores[language] += 1
    best = max(scores.values())
    # English first in _LATIN, so max() keeps it on a tie.
    return next(language for language in _LATIN if scores[language] == best)
