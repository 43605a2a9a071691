"""A JSGF grammar built from hassil sentence templates, for a constrained recognizer.

hassil parses every template into an expression tree (``Sequence``, ``Alternative``,
``Permutation``, ``ListReference`` to a slot list, ``RuleReference`` to an expansion rule,
``TextChunk`` of literal words). :func:`build_jsgf` walks that tree and writes the same
language as a JSGF grammar that pocketsphinx can decode against, so the recognizer can
only hear sentences the templates can produce.

Speech recognizers only know words they can pronounce: digits are spelled out
("12" -> "twelve"), punctuation is dropped, and an alternative holding a word outside the
pronunciation dictionary is left out of the grammar (reported in
:attr:`Grammar.skipped_words`) rather than failing the whole domain. Templates that need
free text (wildcard slots such as ``{name}`` of a shopping-list item) cannot be heard by
a closed grammar and are skipped.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hassil.expression import (
    Alternative,
    Expression,
    ListReference,
    Permutation,
    RuleReference,
    Sentence,
    Sequence,
    TextChunk,
)
from hassil.intents import (
    Intents,
    RangeSlotList,
    SlotList,
    TextSlotList,
    WildcardSlotList,
)

log = logging.getLogger(__name__)

NULL = "<NULL>"
VOID = "<VOID>"
MAX_PERMUTATION_ITEMS = 5  # 5! = 120 orders; more would blow up the grammar

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def spell_number(n: int) -> str:
    """English words for a whole number below a million ("112" -> "one hundred twelve")."""
    if n < 0:
        return "minus " + spell_number(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + spell_number(rest))
    if n < 1_000_000:
        thousands, rest = divmod(n, 1000)
        return spell_number(thousands) + " thousand" + (
            "" if rest == 0 else " " + spell_number(rest))
    raise ValueError(f"number {n} too large to spell")


_TOKEN = re.compile(r"[a-z0-9']+(?:\.[0-9]+)?")


def spoken_words(text: str) -> list[str]:
    """Lower-case spoken words of ``text``: punctuation dropped, digits spelled out."""
    words: list[str] = []
    for token in _TOKEN.findall(text.lower().replace("-", " ")):
        if token.isdigit():
            words.extend(spell_number(int(token)).split())
        else:
            words.append(token.strip("'") or token)
    return [w for w in words if w]


@dataclass
class Grammar:
    """A JSGF grammar and what was left out while building it."""

    jsgf: str
    words: set[str] = field(default_factory=set)  # every word the grammar can produce
    skipped_words: set[str] = field(default_factory=set)  # not in the dictionary
    skipped_sentences: list[str] = field(default_factory=list)  # wildcards etc.
    intents: list[str] = field(default_factory=list)


class _Unsupported(Exception):
    """A template part a closed grammar cannot express (a wildcard slot)."""


def _rule_name(kind: str, name: str, prefix: str = "") -> str:
    return f"{prefix}{kind}_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


class _Builder:
    def __init__(self, intents: Intents, slot_lists: dict[str, SlotList],
                 in_vocabulary: Callable[[str], bool], prefix: str = ""):
        self.prefix = prefix
        self.intents = intents
        self.slot_lists = {**intents.slot_lists, **slot_lists}
        self.known = in_vocabulary
        self.rules: dict[str, str] = {}  # rule name -> body
        self.words: set[str] = set()
        self.skipped_words: set[str] = set()
        self.local_rules: dict[str, Sentence] = {}  # expansion rules of one data block
        self.local_lists: dict[str, SlotList] = {}

    # Literal text ------------------------------------------------------------------
    def words_of(self, text: str) -> str | None:
        """JSGF for literal text, or None when a word cannot be pronounced."""
        words = spoken_words(text)
        missing = [w for w in words if not self.known(w)]
        if missing:
            self.skipped_words.update(missing)
            return None
        self.words.update(words)
        return " ".join(words) if words else NULL

    # Expressions -------------------------------------------------------------------
    def expr(self, e: Expression) -> str | None:
        """JSGF for one expression; None when it can produce nothing speakable."""
        if isinstance(e, TextChunk):
            return self.words_of(e.text)
        if isinstance(e, ListReference):
            return self.list_ref(e)
        if isinstance(e, RuleReference):
            return self.rule_ref(e)
        if isinstance(e, Permutation):
            return self.permutation(e)
        if isinstance(e, Alternative):
            parts = list(dict.fromkeys(p for p in (self.expr(i) for i in e.items)
                                       if p is not None))  # "( |-)" is one <NULL>
            if e.is_optional:
                parts = [p for p in parts if p != NULL]
                return f"[ {' | '.join(parts)} ]" if parts else NULL
            if not parts:
                return None
            return parts[0] if len(parts) == 1 else f"( {' | '.join(parts)} )"
        if isinstance(e, Sequence):
            parts = []
            for item in _glue_suffixes(e.items):
                p = self.expr(item)
                if p is None:
                    return None
                if p != NULL:
                    parts.append(p)
            return " ".join(parts) if parts else NULL
        raise TypeError(f"unknown hassil expression {type(e).__name__}")

    def permutation(self, e: Permutation) -> str | None:
        """Every order of the items; optional items ([a];[b]) may also be left out.

        Each arrangement is written out without empty branches: long chains of
        optional parts make the decoder's search graph slow and fragile."""
        if len(e.items) > MAX_PERMUTATION_ITEMS:
            raise _Unsupported(f"permutation of {len(e.items)} items")
        required: list[str] = []
        optional: list[str] = []
        for item in e.items:
            opt = _optional_alternative(item)
            if opt is not None:
                filled = [i for i in opt.items if not (isinstance(i, TextChunk) and
                                                       not i.text.strip())]
                p = self.expr(Alternative(items=filled, is_optional=False))
                if p is not None and p != NULL:
                    optional.append(p)
            else:
                p = self.expr(item)
                if p is None:
                    return None
                if p != NULL:
                    required.append(p)
        orders: list[str] = []
        for k in range(len(optional) + 1):
            for chosen in itertools.combinations(optional, k):
                for order in itertools.permutations(required + list(chosen)):
                    seq = " ".join(order)
                    if seq and seq not in orders:
                        orders.append(seq)
        if not orders:
            return NULL
        body = orders[0] if len(orders) == 1 else f"( {' | '.join(orders)} )"
        return f"[ {body} ]" if not required else body

    def rule_ref(self, e: RuleReference) -> str | None:
        name = _rule_name("rule", e.rule_name, self.prefix)
        if name not in self.rules:
            rule = self.local_rules.get(e.rule_name) or self.intents.expansion_rules.get(
                e.rule_name)
            if rule is None:
                raise _Unsupported(f"unknown expansion rule <{e.rule_name}>")
            self.rules[name] = VOID  # guards against recursion while building
            body = self.expr(rule.expression)
            self.rules[name] = VOID if body is None else body
        return None if self.rules[name] == VOID else f"<{name}>"

    def list_ref(self, e: ListReference) -> str | None:
        name = _rule_name("list", e.list_name, self.prefix)
        if name in self.rules:
            return None if self.rules[name] == VOID else f"<{name}>"
        slot_list = self.local_lists.get(e.list_name) or self.slot_lists.get(e.list_name)
        if e.is_inline_range:
            start, stop, step = e.get_inline_range() or (0, 0, 1)
            slot_list = RangeSlotList(name=e.list_name, start=start, stop=stop, step=step)
        if slot_list is None or isinstance(slot_list, WildcardSlotList):
            raise _Unsupported(f"slot list {{{e.list_name}}} is free text or undefined")
        alternatives: list[str] = []
        if isinstance(slot_list, TextSlotList):
            for value in slot_list.values:
                if _has_digit(value.text_in):
                    continue  # a typed form ("12 oz"); the spoken form is its own value
                p = self.expr(value.text_in)
                if p is not None and p != NULL and p not in alternatives:
                    alternatives.append(p)
        elif isinstance(slot_list, RangeSlotList):
            for n in range(slot_list.start, slot_list.stop + 1, slot_list.step):
                p = self.words_of(str(n))
                if p is not None and p not in alternatives:
                    alternatives.append(p)
        else:
            raise _Unsupported(f"slot list type {type(slot_list).__name__}")
        self.rules[name] = " | ".join(alternatives) if alternatives else VOID
        return None if not alternatives else f"<{name}>"


def _plain_text(e: Expression) -> str | None:
    """The literal text of ``e`` when it is only text (no lists, rules or choices)."""
    if isinstance(e, TextChunk):
        return e.text
    if isinstance(e, Sequence) and not isinstance(e, (Alternative, Permutation)):
        texts = [_plain_text(i) for i in e.items]
        return None if any(t is None for t in texts) else "".join(texts)  # type: ignore
    return None


def _glue_suffixes(items: list[Expression]) -> list[Expression]:
    """Word-internal choices as whole words: ``minute[s]`` is "minute" or "minutes".

    hassil writes ``minute[s]`` as the text "minute" followed by an optional "s" with
    no space between; read word by word, that would be the words "minute" and "s"
    (the letter). Such a pair becomes one alternative of whole words."""
    out: list[Expression] = []
    i = 0
    while i < len(items):
        item = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        text = item.text if isinstance(item, TextChunk) else None
        if (text and not text[-1].isspace() and isinstance(nxt, Alternative)
                and all(_plain_text(a) is not None for a in nxt.items)):
            endings = [_plain_text(a) or "" for a in nxt.items]
            if all(not t or not t[0].isspace() for t in endings):
                head, _, last = text.rpartition(" ")
                if not last:
                    head, last = "", text
                if head.strip():
                    out.append(TextChunk(head + " "))
                words = [TextChunk(last + t) for t in dict.fromkeys(endings)]
                out.append(Alternative(items=words, is_optional=False))
                i += 2
                continue
        out.append(item)
        i += 1
    return out


def _optional_alternative(e: Expression) -> Alternative | None:
    """The optional alternative ``[...]`` that ``e`` consists of (around whitespace)."""
    while isinstance(e, Sequence) and not isinstance(e, Alternative):
        items = [i for i in e.items if not (isinstance(i, TextChunk) and not i.text.strip())]
        if len(items) != 1:
            return None
        e = items[0]
    return e if isinstance(e, Alternative) and e.is_optional else None


def _has_digit(e: Expression) -> bool:
    if isinstance(e, TextChunk):
        return any(c.isdigit() for c in e.text)
    if isinstance(e, (Sequence, Alternative, Permutation)):
        return any(_has_digit(i) for i in e.items)
    return False


def build_jsgf(intents: Intents, *, slot_lists: dict[str, SlotList] | None = None,
               in_vocabulary: Callable[[str], bool] = lambda w: True,
               only_intents: Iterable[str] | None = None, name: str = "hark",
               prefix: str = "") -> Grammar:
    """A JSGF grammar whose sentences are exactly those of ``intents``' templates.

    ``in_vocabulary(word)`` tells whether the recognizer can pronounce a word; parts
    with other words are left out. ``slot_lists`` adds or overrides lists (areas, names).
    ``prefix`` starts every rule name, so grammars of several domains can be combined
    (:func:`combine`).
    """
    builder = _Builder(intents, slot_lists or {}, in_vocabulary, prefix)
    wanted = set(only_intents) if only_intents is not None else None
    intent_rules: list[str] = []
    skipped: list[str] = []
    for intent in intents.intents.values():
        if wanted is not None and intent.name not in wanted:
            continue
        sentences: list[str] = []
        for data in intent.data:
            builder.local_rules = data.expansion_rules
            builder.local_lists = data.slot_lists
            for sentence in data.sentences:
                try:
                    body = builder.expr(_expression(sentence))
                except _Unsupported as exc:
                    skipped.append(f"{sentence.text} ({exc})")
                    continue
                if body is not None and body != NULL and body not in sentences:
                    sentences.append(body)
        if sentences:
            rule = _rule_name("intent", intent.name, prefix)
            builder.rules[rule] = " | ".join(f"( {s} )" for s in sentences)
            intent_rules.append(rule)
    if not intent_rules:
        raise ValueError("no template could be turned into a grammar (all free text or "
                         "unpronounceable words)")
    lines = ["#JSGF V1.0;", f"grammar {name};",
             "public <command> = " + " | ".join(f"<{r}>" for r in intent_rules) + " ;"]
    lines += [f"<{rule}> = {body} ;" for rule, body in builder.rules.items() if body != VOID]
    if builder.skipped_words:
        log.info("grammar: left out words the recognizer cannot pronounce: %s",
                 ", ".join(sorted(builder.skipped_words)))
    return Grammar(jsgf="\n".join(lines) + "\n", words=builder.words,
                   skipped_words=builder.skipped_words, skipped_sentences=skipped,
                   intents=[r.removeprefix(prefix + "intent_") for r in intent_rules])


def combine(grammars: list[Grammar], name: str = "hark") -> Grammar:
    """One grammar accepting any sentence of ``grammars`` (built with distinct prefixes)."""
    publics: list[str] = []
    rules: list[str] = []
    for g in grammars:
        for line in g.jsgf.splitlines():
            if line.startswith("public <command> = "):
                publics.append(line.removeprefix("public <command> = ").removesuffix(" ;"))
            elif line.startswith("<"):
                rules.append(line)
    if not publics:
        raise ValueError("no grammar to combine")
    jsgf = "\n".join(["#JSGF V1.0;", f"grammar {name};",
                      "public <command> = " + " | ".join(publics) + " ;", *rules]) + "\n"
    return Grammar(jsgf=jsgf, words=set().union(*(g.words for g in grammars)),
                   skipped_words=set().union(*(g.skipped_words for g in grammars)),
                   skipped_sentences=[s for g in grammars for s in g.skipped_sentences],
                   intents=[i for g in grammars for i in g.intents])


def _expression(sentence: Sentence | Expression) -> Expression:
    return sentence.expression if isinstance(sentence, Sentence) else sentence
