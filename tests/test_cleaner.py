"""Speech cleaning: markdown, lists, tables, code, emoji and URLs go; units, symbols and
abbreviations are spoken; streaming gives the same text as cleaning all at once."""

from __future__ import annotations

import pytest

from hark.tts.cleaner import SpeechCleaner, clean_for_speech

CASES = [
    ("**Paris** is the capital of *France*. 🇫🇷😀", "Paris is the capital of France."),
    ("# Steps\n1. Preheat to 180°C\n2. Bake for 20-25 min\n",
     "Steps. Preheat to 180 degrees Celsius. Bake for 20 to 25 minutes."),
    ("- Dr. Smith says e.g. 3.5 km is 50% of it.",
     "Doctor Smith says for example 3.5 kilometers is 50 percent of it."),
    ("See https://docs.python.org/3/library for more, or [the docs](https://example.com/x).",
     "See docs.python.org for more, or the docs."),
    ("```python\nprint('hi')\n```\nThat prints hi. Use `print()` here.",
     "That prints hi. Use print() here."),
    ("| Name | Age |\n|---|---|\n| Bob | 30 |\n", "Name, Age. Bob, 30."),
    ("It costs $3.5 million & weighs ~5 kg, i.e. a lot.",
     "It costs 3.5 million dollars and weighs about 5 kilograms, that is a lot."),
    ("Sure! Here are some tips:\n\n* **Sleep** well\n* Drink water 💧\n\n> Stay calm",
     "Sure! Here are some tips: Sleep well. Drink water. Stay calm"),
    ("It is 25 °C (77°F) and 1 m tall, 1 lb heavy, 2 GB big.",
     ("It is 25 degrees Celsius (77 degrees Fahrenheit) and 1 meter tall, 1 pound heavy, "
      "2 gigabytes big.")),
    ("Mail me at bob@example.com or visit www.example.org today.",
     "Mail me at an email address or visit example.org today."),
    ("Born on 2023-11-25 in No. 5 Main St., it weighs 1,000 kg.",
     "Born on 2023-11-25 in number 5 Main St., it weighs 1,000 kilograms."),
    ("__Bold__ and _italic_ and ~~gone~~ words, snake_case stays.",
     "Bold and italic and gone words, snake_case stays."),
    ("Read [the official Python docs](https://docs.python.org/3/) first.",
     "Read the official Python docs first."),
    ("Plain text stays as it is: 42 apples, 7 pears.", "Plain text stays as it is: 42 apples, 7 pears."),
    ("It takes 5 - 10 minutes, e. g. at 20° C or $5 million.",
     "It takes 5 to 10 minutes, for example at 20 degrees Celsius or 5 million dollars."),
]


@pytest.mark.parametrize("raw,expected", CASES)
def test_clean_for_speech(raw: str, expected: str) -> None:
    assert clean_for_speech(raw) == expected


@pytest.mark.parametrize("raw,expected", CASES)
@pytest.mark.parametrize("step", [1, 2, 5])
def test_streaming_matches_whole_text(raw: str, expected: str, step: int) -> None:
    cleaner = SpeechCleaner()
    parts = [cleaner.push(raw[i:i + step]) for i in range(0, len(raw), step)]
    parts.append(cleaner.flush())
    assert "".join(parts).strip() == expected


def test_streaming_releases_text_early() -> None:
    """Text is released as the stream goes, not only at the end (TTS can start)."""
    cleaner = SpeechCleaner()
    out = ""
    for word in ["The", "capital", "of", "France", "is", "Paris,", "a", "big", "city", "with", "many", "old", "buildings"]:
        out += cleaner.push(word + " ")
    assert out.startswith("The capital of France is Paris,")
    assert (out + cleaner.flush()).strip().endswith("old buildings")


def test_only_the_word_being_written_is_held_back() -> None:
    """Each word is released as soon as the next one starts: the first spoken chunk
    must not wait for words the cleaner has no reason to hold."""
    cleaner = SpeechCleaner()
    released = [cleaner.push(piece) for piece in ["The", " moon", " is", " approximately", " "]]
    assert released == ["", "The ", "moon ", "is ", "approximately "]


def test_number_waits_for_its_unit() -> None:
    cleaner = SpeechCleaner()
    out = cleaner.push("It is about 3.5 ") + cleaner.push("km away from here ") + \
        cleaner.push("and more")
    out += cleaner.flush()
    assert out == "It is about 3.5 kilometers away from here and more"


def test_code_block_dropped_while_streaming() -> None:
    cleaner = SpeechCleaner()
    out = cleaner.push("Here:\n```\n")
    out += cleaner.push("x = 1 ** 2\nprint(x)\n")
    out += cleaner.push("```\nDone.")
    out += cleaner.flush()
    assert out == "Here: Done."
