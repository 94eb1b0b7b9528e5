"""SentenceSegmenter on streamed text, fed whole and one character at a time."""

from __future__ import annotations

import pytest

from omniserve.speech.segmenter import SentenceSegmenter


def segments(text: str, step: int = 1, first_clause_chars: int = 8) -> list[str]:
    segmenter = SentenceSegmenter(first_clause_chars)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += segmenter.feed(text[i : i + step])
    rest = segmenter.flush()
    return [*out, rest] if rest is not None else out


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_chinese_sentences_keep_marks_and_closing_quotes(step: int) -> None:
    text = "今天天气很好，我们一起去公园散步吧。你觉得怎么样？他说：“好啊！”然后我们走了……真的"
    assert segments(text, step) == [
        "今天天气很好，我们一起去公园散步吧。",
        "你觉得怎么样？",
        "他说：“好啊！”",
        "然后我们走了……",
        "真的",
    ]


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_english_sentences(step: int) -> None:
    text = 'It costs 3.14 dollars. Really?! He said "yes." Then he left...\n\nNext line\nLast'
    assert segments(text, step, first_clause_chars=100) == [
        "It costs 3.14 dollars.",
        "Really?!",
        'He said "yes."',
        "Then he left...",
        "Next line",
        "Last",
    ]


def test_first_segment_splits_at_a_clause_once_long_enough() -> None:
    text = "Well, as I was saying, the weather is fine, really. And then, later, rain."
    assert segments(text) == [
        "Well, as I was saying,",
        "the weather is fine, really.",
        "And then, later, rain.",
    ]


def test_first_chinese_clause() -> None:
    text = "这是一个比较长的开头，然后继续说下去，最后结束。第二句，也有逗号。"
    assert segments(text) == [
        "这是一个比较长的开头，",
        "然后继续说下去，最后结束。",
        "第二句，也有逗号。",
    ]


def test_first_clause_threshold_is_adjustable() -> None:
    assert segments("你好，世界。", first_clause_chars=2) == ["你好，", "世界。"]
    assert segments("你好，世界。") == ["你好，世界。"]


def test_decimals_thousands_times_and_abbreviations_do_not_split() -> None:
    text = "Pi is 3.14159 and 1,000 people met at 10:30 with Dr. Smith, e.g. me. Done."
    assert segments(text, first_clause_chars=1000) == [
        "Pi is 3.14159 and 1,000 people met at 10:30 with Dr. Smith, e.g. me.",
        "Done.",
    ]


def test_ascii_marks_between_chinese_characters_split() -> None:
    assert segments("你好!我来了.好的", first_clause_chars=1000) == ["你好!", "我来了.", "好的"]


def test_url_question_mark_does_not_split() -> None:
    text = "Open https://example.com/?q=1 now. Thanks"
    assert segments(text) == ["Open https://example.com/?q=1 now.", "Thanks"]


def test_punctuation_only_segments_are_dropped() -> None:
    assert segments("...  。 !\n\n") == []
    assert segments("？！Hello there. …") == ["Hello there."]


def test_boundary_waits_for_the_next_character() -> None:
    segmenter = SentenceSegmenter()
    assert segmenter.feed("他说：“你好。") == []
    assert segmenter.feed("”我") == ["他说：“你好。”"]
    assert segmenter.flush() == "我"


def test_flush_empties_the_buffer() -> None:
    segmenter = SentenceSegmenter()
    assert segmenter.feed("Hello world") == []
    assert segmenter.flush() == "Hello world"
    assert segmenter.flush() is None
    assert segmenter.feed("   ") == []
    assert segmenter.flush() is None


def test_only_the_first_segment_splits_at_clauses() -> None:
    segmenter = SentenceSegmenter(first_clause_chars=1)
    assert segmenter.feed("A, b, c. D, e, f. ") == ["A,", "b, c.", "D, e, f."]
