"""Checks on what Whisper heard in a spoken reply."""

from __future__ import annotations

import re

# number words, and the sound-alikes Whisper tiny writes for them ("It's 4:39 PM." spoken
# by Piper comes back as "It's for 39 pm.")
_NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "for": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11",
    "twelve": "12",
}


def digits_heard(text: str) -> str:
    """The digits of ``text``, number words (and their sound-alikes) counted as digits."""
    words = re.findall(r"[a-z]+|\d+", text.lower())
    return "".join(_NUMBER_WORDS.get(w, w) for w in words if w.isdigit() or w in _NUMBER_WORDS)
