"""Turning model text into text that sounds right when spoken, while it streams.

Removes what a voice cannot say (markdown emphasis, headers, list bullets, tables, code,
emoji) and rewrites what a voice would say badly: URLs become their domain, units and
symbols become words ("3.5 km" -> "3.5 kilometers", "20°C" -> "20 degrees Celsius",
"%" -> "percent"), abbreviations are spelled out ("Dr." -> "Doctor", "e.g." -> "for
example"). Digits stay digits: Piper reads numbers well.

:class:`SpeechCleaner` works on a stream: it holds back only what could still change
meaning (the current word, a number waiting for its unit, a line whose markup is not
decided yet) and releases the rest at once. :func:`clean_for_speech` cleans whole text.
"""

from __future__ import annotations

import re

# --- inline rewriting ---------------------------------------------------------------

_EMOJI = re.compile(
    "[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U0001F1E6-\U0001F1FF"
    "\U00002B00-\U00002BFF\U0000FE0F\U0000200D\U000020E3\U00002300-\U000023FF]+"
)
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]*)\)")
_LINK_TAIL = re.compile(r"\]\([^)\s]*\)")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>()\"']+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@([\w-]+\.)+[A-Za-z]{2,}\b")
_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|~~|`+)")
_LONE_UNDERSCORE_EMPH = re.compile(r"(?<![A-Za-z0-9])_([^_\s][^_]*?)_(?![A-Za-z0-9])")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")

_UNITS: dict[str, tuple[str, str]] = {  # unit -> (singular, plural)
    "km": ("kilometer", "kilometers"),
    "m": ("meter", "meters"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "nm": ("nanometer", "nanometers"),
    "mi": ("mile", "miles"),
    "ft": ("foot", "feet"),
    "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"),
    "l": ("liter", "liters"),
    "L": ("liter", "liters"),
    "ml": ("milliliter", "milliliters"),
    "mL": ("milliliter", "milliliters"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"),
    "mph": ("mile per hour", "miles per hour"),
    "m/s": ("meter per second", "meters per second"),
    "ms": ("millisecond", "milliseconds"),
    "sec": ("second", "seconds"),
    "min": ("minute", "minutes"),
    "hr": ("hour", "hours"),
    "hrs": ("hour", "hours"),
    "h": ("hour", "hours"),
    "Hz": ("hertz", "hertz"),
    "kHz": ("kilohertz", "kilohertz"),
    "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"),
    "W": ("watt", "watts"),
    "kW": ("kilowatt", "kilowatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"),
    "V": ("volt", "volts"),
    "KB": ("kilobyte", "kilobytes"),
    "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"),
    "TB": ("terabyte", "terabytes"),
    "°C": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "° C": ("degree Celsius", "degrees Celsius"),
    "° F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"),
    "%": ("percent", "percent"),
}
_NUM = r"(\d+(?:[.,]\d+)*)"
_UNIT_RE = re.compile(
    _NUM + r"\s?(" + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
    + r")(?![A-Za-z0-9/])"
)
_CURRENCY = {"$": "dollars", "€": "euros", "£": "pounds", "¥": "yen"}
_MONEY_RE = re.compile(r"([$€£¥])\s?" + _NUM + r"(\s(?:thousand|million|billion|trillion))?")
_RANGE_RE = re.compile(r"(?<![\d/-])(\d+)\s?[-–]\s?(\d+)(?![\d/-])")
_ABBREV = [
    (re.compile(r"\be\.\s?g\.(?=\s|,|$)", re.IGNORECASE), "for example"),
    (re.compile(r"\bi\.\s?e\.(?=\s|,|$)", re.IGNORECASE), "that is"),
    (re.compile(r"\betc\."), "et cetera."),
    (re.compile(r"\bvs\.?(?=\s)"), "versus"),
    (re.compile(r"\bapprox\.(?=\s)"), "approximately"),
    (re.compile(r"\bDr\.(?=\s)"), "Doctor"),
    (re.compile(r"\bMr\.(?=\s)"), "Mister"),
    (re.compile(r"\bMrs\.(?=\s)"), "Missus"),
    (re.compile(r"\bProf\.(?=\s)"), "Professor"),
    (re.compile(r"\bSt\.(?=\s[A-Z])"), "Saint"),
    (re.compile(r"\bNo\.(?=\s?\d)"), "number"),
    (re.compile(r"\bw/(?=\s)"), "with"),
    (re.compile(r"(?<!\S)&(?!\S)"), "and"),
    (re.compile(r"(?<!\S)\+(?!\S)"), "plus"),
    (re.compile(r"(?<!\S)=(?!\S)"), "equals"),
    (re.compile(r"~(?=\d)"), "about "),
    (re.compile(r"(?<!\S)(?:->|→|=>)(?!\S)"), "to"),
]


def _url_to_words(url: str) -> str:
    m = re.match(r"(?:https?://)?(?:www\.)?([^/:?#]+)", url, re.IGNORECASE)
    domain = m.group(1).rstrip(".") if m else ""
    return domain if domain and "." in domain else "a link"


def _unit_words(m: re.Match) -> str:
    number, unit = m.group(1), m.group(2)
    singular, plural = _UNITS[unit]
    return f"{number} {singular if number == '1' else plural}"


def _money_words(m: re.Match) -> str:
    symbol, number, scale = m.group(1), m.group(2), m.group(3) or ""
    name = _CURRENCY[symbol]
    if number == "1" and not scale:
        name = name.rstrip("s")
    return f"{number}{scale} {name}"


def clean_inline(text: str) -> str:
    """Rewrite one run of text without line structure (used by the streaming cleaner)."""
    text = _HTML_TAG.sub("", text)
    text = _MD_LINK.sub(lambda m: m.group(1) or _url_to_words(m.group(2)), text)
    text = _LINK_TAIL.sub("", text)  # "docs](url)": a link whose text was cut off by streaming
    text = text.replace("![", "").replace("[", "").replace("]", "")
    text = _URL.sub(lambda m: _url_to_words(m.group(0)), text)
    text = _EMAIL.sub("an email address", text)
    text = _EMOJI.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _LONE_UNDERSCORE_EMPH.sub(r"\1", text)
    text = _MONEY_RE.sub(_money_words, text)
    text = _UNIT_RE.sub(_unit_words, text)
    text = _RANGE_RE.sub(r"\1 to \2", text)
    for pattern, words in _ABBREV:
        text = pattern.sub(words, text)
    text = text.replace("#", "").replace("|", ",").replace("\\", "")
    return re.sub(r"[ \t]+", " ", text)


# --- line structure -------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_HEADER = re.compile(r"^\s*#{1,6}\s+")
_QUOTE = re.compile(r"^\s*>\s?")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
# A line start that might still become markup when more text arrives.
_UNDECIDED = re.compile(r"^\s*(?:[-*+•#>|`~_]*|\d{1,3}[.)]?)$")
# Where a streamed line can safely be cut: after clause punctuation + whitespace.
_SAFE_CUT = re.compile(r"[.,;:!?)\]][\"')\]]*\s+")
_NEEDS_NEXT = re.compile(r"\b(?:No|St)\.$")  # read by what follows: "No. 5", "St. Louis"
# A cut must not fall just after these: what follows changes how they are read
# ("3.5 km", "5 - 10", "20° C", "e. g.", "$5 million").
_NO_CUT_AFTER = re.compile(r"(?:\d|\d\s?[-–]|°|\b[A-Za-z]\.|[$€£¥])\s+$")
_HOLD_WORDS = 1  # mid-line, only the word still being written is held back


def _end_sentence(text: str) -> str:
    text = text.rstrip()
    if text and text[-1] not in ".!?,;:":
        text += "."
    return text


class SpeechCleaner:
    """Streaming speech cleaner: ``push(piece) -> str`` returns the cleaned text that
    is final so far (possibly ""), ``flush() -> str`` the rest at the end of the reply.
    The concatenation of everything returned reads as one clean text."""

    def __init__(self) -> None:
        self._line = ""  # raw text of the current line not released yet
        self._line_kind: str | None = None  # None = line start not decided yet
        self._in_code = False
        self._out_started = False
        self._ends_space = False  # the last text returned ended with a space

    def push(self, piece: str) -> str:
        out: list[str] = []
        self._line += piece
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            out.append(self._finish_line(line))
        out.append(self._partial())
        return self._join(out)

    def flush(self) -> str:
        line, self._line = self._line, ""
        text = self._finish_line(line, last=True)
        self._in_code = False
        return self._join([text]).rstrip()

    # --- internals ---------------------------------------------------------------------

    def _join(self, parts: list[str]) -> str:
        text = "".join(parts)
        text = re.sub(r"\s+", " ", text)
        if not self._out_started or self._ends_space:
            text = text.lstrip()
        if text:
            self._out_started = True
            self._ends_space = text[-1] == " "
        return text

    def _classify(self, line: str, complete: bool) -> str | None:
        """Decide what a line is once its start is unambiguous (or it is complete)."""
        if _FENCE.match(line):
            return "fence"
        if self._in_code:
            return "code"
        if not complete and _UNDECIDED.match(line):
            return None
        if line.lstrip().startswith("|"):
            return "table"
        if _RULE.match(line) and complete:
            return "rule"
        if _HEADER.match(line):
            return "header"
        if _BULLET.match(line):
            return "bullet"
        if _QUOTE.match(line):
            return "quote"
        return "text"

    def _strip_marker(self, line: str, kind: str) -> str:
        pattern = {"header": _HEADER, "bullet": _BULLET, "quote": _QUOTE}.get(kind)
        return pattern.sub("", line, count=1) if pattern else line

    def _partial(self) -> str:
        """Release the safe part of the unfinished current line."""
        if self._line_kind is None:
            kind = self._classify(self._line, complete=False)
            if kind is None or kind in ("fence", "code", "table"):
                return ""  # wait for the whole line
            self._line_kind = kind
            self._line = self._strip_marker(self._line, kind)
        if self._line_kind in ("fence", "code", "table", "rule"):
            return ""
        cut = 0
        for m in _SAFE_CUT.finditer(self._line):
            cut = m.end()
        words = list(re.finditer(r"\s+", self._line))
        # a bullet or header line ends with a period added at the line's end, so keep
        # its last word too: the period must follow a word, not a trailing emoji
        hold = _HOLD_WORDS + (self._line_kind in ("header", "bullet"))
        if len(words) >= hold:
            cut = max(cut, words[-hold].end())
        # never cut right after a number (its unit, "km", "°C", "%", may come next) or
        # after a word read by what follows ("No. 5")
        while cut > 0 and (_NO_CUT_AFTER.search(self._line[:cut])
                           or _NEEDS_NEXT.search(self._line[:cut].rstrip())):
            m = re.search(r"\S+\s+$", self._line[:cut])
            cut = m.start() if m else 0
        if cut <= 0:
            return ""
        released, self._line = self._line[:cut], self._line[cut:]
        return self._clean_keep_space(released)

    @staticmethod
    def _clean_keep_space(text: str) -> str:
        cleaned = clean_inline(text)
        if text[-1:].isspace() and not cleaned[-1:].isspace():
            cleaned += " "
        return cleaned

    def _finish_line(self, line: str, last: bool = False) -> str:
        stripped = self._line_kind is not None  # marker already removed by _partial
        kind = self._line_kind or self._classify(line, complete=True)
        self._line_kind = None
        if kind == "fence":
            self._in_code = not self._in_code
            return ""
        if kind in ("code", "rule"):
            return ""
        if kind == "table":
            if _TABLE_SEP.match(line):
                return ""
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            text = ", ".join(c for c in cells if c)
            return _end_sentence(clean_inline(text)) + " " if text else ""
        if not stripped and kind in ("header", "bullet", "quote"):
            line = self._strip_marker(line, kind)
        text = clean_inline(line)
        if kind in ("header", "bullet") and text.strip():
            text = _end_sentence(text)  # "Step one" + newline reads as its own sentence
        return text + ("" if last else " ")


def clean_for_speech(text: str) -> str:
    """Clean a whole reply for speech (same rules as the streaming cleaner)."""
    cleaner = SpeechCleaner()
    return (cleaner.push(text) + cleaner.flush()).strip()
