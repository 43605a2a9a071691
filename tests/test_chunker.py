"""SpeechChunker: speakable chunks as early as a clause allows, never inside "3.5",
"Dr. Smith", "e.g." or "U.S."."""

from __future__ import annotations

import pytest

from hark.tts.chunker import SpeechChunker, sentence_ends


def feed(text: str, chunker: SpeechChunker | None = None, step: int = 1) -> list[str]:
    """Push ``text`` a few characters at a time, like a token stream, then flush."""
    ch = chunker or SpeechChunker()
    out: list[str] = []
    for i in range(0, len(text), step):
        out += ch.push(text[i:i + step])
    return out + ch.flush()


@pytest.mark.parametrize("step", [1, 3, 100])
def test_sentences_are_chunks_and_text_is_kept(step: int) -> None:
    text = "The sky is blue. It scatters light! Why? Because of air."
    chunks = feed(text, step=step)
    assert chunks == ["The sky is blue.", "It scatters light!", "Why?", "Because of air."]


def test_first_chunk_cut_at_clause_once_long_enough() -> None:
    chunks = feed("Well, the capital of France, as you know, is Paris. It is big, and old.")
    # "Well," is too short (< 12 chars) to be said alone; the next comma is not
    assert chunks[0] == "Well, the capital of France,"
    # later chunks are whole sentences even when they hold commas
    assert chunks[1:] == ["as you know, is Paris.", "It is big, and old."]


def test_first_chunk_returned_before_the_sentence_ends() -> None:
    ch = SpeechChunker(first_min_chars=12)
    assert ch.push("Paris is the capital, ") == ["Paris is the capital,"]
    assert ch.push("and it is large") == []
    assert ch.flush() == ["and it is large"]


@pytest.mark.parametrize("text", [
    "Pi is about 3.14 and e is about 2.72 today.",
    "Dr. Smith and Mr. Jones met Prof. Lee at 5 p.m. on Monday.",
    "Eat fruit, e.g. apples, and i.e. not candy, every day.",
    "He moved to the U.S. last year and then to the U.K. in June.",
    "J. K. Rowling wrote it.",
])
def test_no_split_inside_numbers_and_abbreviations(text: str) -> None:
    ch = SpeechChunker(first_min_chars=200, max_chars=200)  # only sentence ends may cut
    assert feed(text, ch) == [text]


def test_long_run_without_punctuation_cut_at_word_boundary() -> None:
    words = " ".join(f"word{i}" for i in range(60))
    chunks = feed(words, SpeechChunker(first_min_chars=12, max_chars=50))
    assert all(len(c) <= 50 for c in chunks)
    assert " ".join(chunks) == words  # nothing lost, no word split


def test_sentence_end_waits_for_following_whitespace() -> None:
    ch = SpeechChunker()
    assert ch.push("It costs 3.") == []  # "3." might become "3.5"
    assert ch.push("5 euros. Next") == ["It costs 3.5 euros."]
    assert ch.flush() == ["Next"]


def test_punctuation_only_pieces_are_not_chunks() -> None:
    chunks = feed("Hmm... well. ... OK then.")
    assert all(any(ch.isalnum() for ch in c) for c in chunks)


def test_sentence_ends_helper() -> None:
    text = "Dr. Who is here. It is 3.5 m tall! Really? "
    assert [text[:e] for e in sentence_ends(text)] == [
        "Dr. Who is here.", "Dr. Who is here. It is 3.5 m tall!",
        "Dr. Who is here. It is 3.5 m tall! Really?"]


def test_bad_limits_rejected() -> None:
    with pytest.raises(ValueError):
        SpeechChunker(first_min_chars=50, max_chars=10)


def test_first_chunk_word_limit_without_punctuation():
    from hark.tts.chunker import SpeechChunker

    c = SpeechChunker(12, 120, first_max_words=4)
    out = []
    for piece in "Because it's a reflection of the sun in the sky. Next one here.".split(" "):
        out += c.push(piece + " ")
    out += c.flush()
    assert out[0] == "Because it's a reflection"
    assert out[1:] == ["of the sun in the sky.", "Next one here."]
    # never cut right after a word that leans on the next one
    c = SpeechChunker(12, 120, first_max_words=2)
    assert c.push("Turn the ") == [] and c.push("kitchen ") == ["Turn the kitchen"]


def test_trim_silence_keeps_the_voice_and_a_little_quiet_around_it():
    import numpy as np

    from hark.tts.base import trim_silence

    rate = 1000  # 1 sample per ms
    voice = np.full(200, 5000, dtype=np.int16)
    audio = np.concatenate([np.zeros(60, np.int16), voice, np.zeros(250, np.int16)])
    both = trim_silence(audio, rate, 15, 40)
    assert len(both) == 15 + 200 + 40 and both[15] == 5000 and both[14] == 0
    lead_only = trim_silence(audio, rate, 15, None)
    assert len(lead_only) == 15 + 200 + 250
    tail_only = trim_silence(audio, rate, None, 40)
    assert len(tail_only) == 60 + 200 + 40
    # less silence than asked for: nothing to cut; all-quiet audio is left as it is
    assert len(trim_silence(audio[50:], rate, 15, 300)) == len(audio) - 50
    quiet = np.zeros(100, np.int16)
    assert trim_silence(quiet, rate, 15, 40) is quiet
