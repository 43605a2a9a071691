"""Cutting streamed reply text into pieces the TTS can speak as soon as they exist.

The first chunk decides how long the person waits for the first audio, so it is cut
early: at the first sentence end, or at a clause (comma, semicolon, colon, dash) once it
has ``first_min_chars`` characters, or after ``first_max_words`` words when no
punctuation has come by then (never right after a word like "the" or "of" that leans on
the next one), or at a word boundary once it passes ``max_chars``.
Later chunks are whole sentences (better prosody), cut at a word boundary only when a
sentence runs past ``max_chars``.

A period only ends a sentence when whitespace follows it and the word before it is not
an abbreviation, so "3.5", "Dr. Smith", "e.g. this" and "the U.S. army" stay whole.
"""

from __future__ import annotations

import re

# Words that end with a period without ending the sentence (lower case, without the dot).
ABBREVIATIONS = frozenset(
    (  # noqa: SIM905 - a word list reads best as one string
        "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf approx no fig inc ltd co corp dept "
        "est gen gov lt col sgt capt rev jan feb mar apr jun jul aug sep sept oct nov dec "
        "a.m p.m u.s u.k u.n e.u ph.d"
    ).split()
)

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)")
_CLAUSE_END = re.compile(r"(?:[,;:]|\s[-–—]|—)[\"')\]]*(?=\s)")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)\.$")
_INITIALS = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")  # "U.S" of "U.S."
_SPEAKABLE = re.compile(r"[A-Za-z0-9]")
# words a spoken phrase should not end on: they lean on the word after them
_LEANING = frozenset(
    "a an the of to in on at by for from with and or but as is are was were be "  # noqa: SIM905
    "that this these those its his her their my your our it's i you we they he she "
    "not no very so than then if because about into over under".split()
)
_WORD = re.compile(r"\S+(?=\s)")


def _is_abbreviation(text: str, dot: int) -> bool:
    """Is the period at ``text[dot]`` part of an abbreviation ("Dr.", "e.g.", "U.S.")?"""
    m = _WORD_BEFORE.search(text[: dot + 1])
    if not m:
        return False
    word = m.group(1)
    if len(word) == 1:  # an initial ("J. K. Rowling"), but not "I." or "plan A."
        return word.isupper() and word not in "AI"
    return word.lower() in ABBREVIATIONS or bool(_INITIALS.match(word))


def sentence_ends(text: str) -> list[int]:
    """Positions just after each sentence end in ``text`` that whitespace follows."""
    out = []
    for m in _SENTENCE_END.finditer(text):
        punct = m.group(0)
        if punct.startswith(".") and len(punct.rstrip("\"')]")) == 1 and _is_abbreviation(
                text, m.start()):
            continue
        out.append(m.end())
    return out


class SpeechChunker:
    """Feed text pieces with :meth:`push`; get back speakable chunks as soon as a clause
    can be spoken naturally. :meth:`flush` returns what is left at the end."""

    def __init__(self, first_min_chars: int = 12, max_chars: int = 120,
                 first_max_words: int = 0):
        if first_min_chars < 1 or max_chars < first_min_chars:
            raise ValueError("need 1 <= first_min_chars <= max_chars")
        self.first_min_chars = first_min_chars
        self.max_chars = max_chars
        self.first_max_words = first_max_words  # 0: the first chunk waits for punctuation
        self._buf = ""
        self._emitted = 0  # chunks returned so far

    def push(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                break
            self._emit(self._buf[:cut], out)
            self._buf = self._buf[cut:]
        return out

    def flush(self) -> list[str]:
        out: list[str] = []
        while len(self._buf.strip()) > self.max_chars:
            cut = self._word_cut(self._buf)
            self._emit(self._buf[:cut], out)
            self._buf = self._buf[cut:]
        self._emit(self._buf, out)
        self._buf = ""
        return out

    def reset(self) -> None:
        self._buf = ""
        self._emitted = 0

    # --- internals --------------------------------------------------------------------

    def _emit(self, chunk: str, out: list[str]) -> None:
        chunk = " ".join(chunk.split())
        if not chunk:
            return
        if not _SPEAKABLE.search(chunk):  # "..." or a lone dash: glue to what comes next
            if out:
                out[-1] = f"{out[-1]} {chunk}"
            return
        out.append(chunk)
        self._emitted += 1

    def _next_cut(self) -> int | None:
        buf = self._buf
        ends = [e for e in sentence_ends(buf) if _SPEAKABLE.search(buf[:e])]
        limit = self.max_chars + (len(buf) - len(buf.lstrip()))
        if ends and ends[0] <= limit:
            return ends[0]
        if self._emitted == 0:
            for m in _CLAUSE_END.finditer(buf):
                if m.end() > limit:
                    break
                if len(buf[: m.end()].strip()) >= self.first_min_chars:
                    return m.end()
            if self.first_max_words:
                words = list(_WORD.finditer(buf))
                for n, w in enumerate(words, 1):
                    if w.end() > limit:
                        break
                    if n >= self.first_max_words and \
                            w.group(0).lower().strip("\"'") not in _LEANING:
                        return w.end()
        if len(buf.strip()) > self.max_chars:
            # a long run without a sentence end: cut at a clause if there is one,
            # else at the last word boundary before max_chars
            clauses = [m.end() for m in _CLAUSE_END.finditer(buf, 0, limit)
                       if len(buf[: m.end()].strip()) >= self.first_min_chars]
            if clauses:
                return clauses[-1]
            return self._word_cut(buf)
        return None

    def _word_cut(self, buf: str) -> int:
        lead = len(buf) - len(buf.lstrip())
        limit = lead + self.max_chars
        space = buf.rfind(" ", lead, limit + 1)
        return space if space > lead else limit
