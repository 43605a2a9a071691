"""The intent stage: typed or transcribed text -> intent and slots, without an LLM.

hassil matches the text against, in this order:

1. hark's own local commands (``local.yaml``: stop, volume, repeat that);
2. the user's domains (built-ins from ``hark/nlu/domains/<name>.yaml`` named in
   ``nlu.builtin_domains``, then every YAML file in ``nlu.domains_dir``);
3. Home Assistant's English sentences (the ``home-assistant-intents`` package), with
   names, areas and floors from the home described in ``[home]``.

Before matching, the text is normalized (case, punctuation, filler words such as "um",
"please", "hey"). A normalized text seen before is answered from an LRU cache. When
nothing matches strictly, slot values are corrected to the closest allowed value, but
only when that value is clearly closest (ASR errors like "kitchen lite"). When that
fails too and ``nlu.embedding_fallback`` is on, a paraphrase matcher (sentence
embeddings against example sentences of every intent, :mod:`hark.nlu.embed`) may still
recognise a rephrased command ("unpause the timer"). Text that is none of these (open
questions) gives ``None``: it goes to the LLM.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import LRUCache
from hassil import Intents, TextSlotList, filter_intents, recognize_best, sample_expression
from hassil.expression import TextChunk
from hassil.intents import SlotList
from rapidfuzz import fuzz, process

from hark.config import Config
from hark.errors import ConfigError
from hark.nlu.base import IntentResult
from hark.nlu.domain_files import (
    Domain,
    DomainFileError,
    DomainProblem,
    domain_paths,
    load_domain,
)
from hark.nlu.home import Home, home_from_config

log = logging.getLogger(__name__)

LOCAL_SENTENCES = Path(__file__).with_name("local.yaml")
HOMEASSISTANT = "homeassistant"

MAX_CHARS = 400  # a spoken command is a sentence; longer text goes straight to the LLM
MAX_WORDS = 40
_MISS = object()  # not in the cache (None there means: matches nothing)

# Filler words: dropped anywhere / only at the start / only at the end.
_FILLERS = {"um", "umm", "uh", "uhh", "uhm", "er", "erm", "hmm", "hm", "mm", "ah", "kindly"}
_LEADING = {"hey", "hi", "yo", "ok", "okay", "so", "well", "oh", "alright", "please", "and",
            "thanks",
            # a wake word the transcript kept ("alexa, what's the time")
            "hark", "alexa", "jarvis", "mycroft", "nabu", "rhasspy", "google", "siri"}
_TRAILING = {"please", "thanks", "now"}
_TRAILING_PHRASES = ("thank you", "for me please", "right now")
_KEEP = {"no thanks", "no thank you"}  # the thanks is the meaning here: no filler to drop
# Openings of a polite request that say nothing of what is asked, and that Home
# Assistant's templates do not take ("could you", "can you" and "please" they do):
# "i was wondering if you could turn the light on" is "turn the light on".
_LEADING_PHRASES = tuple(p.split() for p in (
    "i was wondering if you could", "i was wondering if you can", "i wonder if you could",
    "i wonder if you can", "i'm wondering if you could", "do you think you could",
    "would you be able to", "are you able to", "is it possible to", "i'd like you to",
    "i would like you to", "i want you to", "i need you to", "you can", "you could",
    "thank you", "excuse me", "sorry",
))
# "would you mind turning on the light": the verb after it is said as a gerund
_MIND = (["would", "you", "mind"], ["do", "you", "mind"], ["mind"])
_GERUNDS = {
    "turning": "turn", "switching": "switch", "setting": "set", "putting": "put",
    "opening": "open", "closing": "close", "shutting": "shut", "starting": "start",
    "stopping": "stop", "pausing": "pause", "resuming": "resume", "playing": "play",
    "skipping": "skip", "muting": "mute", "unmuting": "unmute", "dimming": "dim",
    "making": "make", "adding": "add", "removing": "remove", "cancelling": "cancel",
    "canceling": "cancel", "changing": "change", "raising": "raise", "lowering": "lower",
    "telling": "tell", "checking": "check", "giving": "give",
}

_ACRONYM = re.compile(r"\b(?:[a-z]\.){2,}")
_PUNCT = re.compile(r"[^\w\s'%.:/-]")  # keep apostrophes, %, and . : / - inside numbers
_LONE = re.compile(r"(?<!\d)[.:/](?!\d)|(?<!\w)-|-(?!\w)|(?<!\w)'|'(?!\w)")


def normalize(text: str) -> str:
    """Lower case, no punctuation or filler words, single spaces: the cache key."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("’", "'")
    text = _ACRONYM.sub(lambda m: m.group(0).replace(".", ""), text)  # t.v. -> tv
    text = _LONE.sub(" ", _PUNCT.sub(" ", text))
    words = [w for w in text.split() if w not in _FILLERS]
    # a word said twice in a row is a stutter ("turn turn off the light"); not numbers
    words = [w for i, w in enumerate(words)
             if i == 0 or w != words[i - 1] or w[0].isdigit()]
    changed = True
    while words and changed:
        changed = False
        while words and words[0] in _LEADING:
            words.pop(0)
            changed = True
        for phrase in _LEADING_PHRASES:
            if len(words) > len(phrase) and words[:len(phrase)] == phrase:
                del words[:len(phrase)]
                changed = True
        for phrase in _MIND:
            n = len(phrase)
            if len(words) > n and words[:n] == phrase and words[n] in _GERUNDS:
                words[:n + 1] = [_GERUNDS[words[n]]]
                changed = True
    if " ".join(words) in _KEEP:
        return " ".join(words)
    changed = True
    while words and changed:
        changed = False
        for phrase in _TRAILING_PHRASES:  # before single words: "right now", not "now"
            n = len(phrase.split())
            if len(words) > n and " ".join(words[-n:]) == phrase:
                del words[-n:]
                changed = True
        if words and words[-1] in _TRAILING:
            words.pop()
            changed = True
    return " ".join(words)


# Words a speech recognizer does not mishear a name as: a fuzzy correction that would
# turn one of these into part of a name ("the temperature" -> "outside temperature")
# is a different sentence, not a misheard one.
_FUNCTION_WORDS = {
    "a", "an", "the", "my", "your", "our", "this", "that", "these", "those", "all", "any",
    "every", "each", "in", "on", "at", "to", "of", "for", "from", "by", "with", "into",
    "off", "up", "down", "and", "or", "is", "are", "was", "it", "its", "me", "i", "you",
    "what", "what's", "which", "how", "who", "where", "when", "there", "here",
}


def _plausible_correction(span: str, value: str) -> bool:
    """Could ``span`` be ``value`` misheard? Not when the value is already there word
    for word with other words around it (the correction would only delete words, e.g.
    "toggle kitchen switch" -> "kitchen switch"), nor when a function word would become
    a different word of the value."""
    words, target = span.split(), value.split()
    n = len(target)
    if any(words[i:i + n] == target for i in range(len(words) - n + 1)):
        return False
    if len(words) == n:
        return not any(w != t and w in _FUNCTION_WORDS for w, t in zip(words, target))
    return True


def _original_span(value: str, original: str) -> str:
    """``value`` (matched in the normalized, lower-case text) as written in ``original``:
    free text such as a timer name or a media title keeps its capitals ("The Office")."""
    words = value.split()
    if not words:
        return value
    text = unicodedata.normalize("NFKC", original).replace("’", "'")
    pattern = r"(?<!\w)" + r"\W+".join(re.escape(w) for w in words) + r"(?!\w)"
    found = re.search(pattern, text, flags=re.IGNORECASE)
    return found.group(0) if found else value


@dataclass
class Matcher:
    """One set of hassil intents with the lists it is matched with."""

    domain: str
    intents: Intents
    slot_lists: dict[str, SlotList]
    responses: dict[str, str] = dataclasses.field(default_factory=dict)


def _plain(value: Any) -> Any:
    """hassil values as plain JSON-able values (5.0 -> 5)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return str(value)


def _list_texts(slot_list: SlotList) -> list[str]:
    """Every spoken form of a text list's values (templates expanded)."""
    if not isinstance(slot_list, TextSlotList):
        return []
    texts = []
    for value in slot_list.values:
        expr = value.text_in
        if isinstance(expr, TextChunk):
            texts.append(expr.text)
        else:
            texts.extend(sample_expression(expr))
    return texts


class IntentStage:
    """Text -> :class:`IntentResult` (or ``None`` for anything outside the templates).

    Build once (``load_nlu(cfg)``); :meth:`recognize` is thread-safe and takes a few
    milliseconds. ``problems`` lists domain files that failed to load (they are skipped,
    every other domain keeps working).
    """

    def __init__(self, cfg: Config, home: Home | None = None,
                 domain_files: list[Path] | None = None, area: str | None = None):
        self.cfg = cfg
        # The room the assistant is in: "set the temperature to 68" then means that
        # room (Home Assistant's sentences need it for area-less climate and volume).
        self.area = area if area is not None else str(getattr(cfg.home, "default_area", ""))
        self.language = cfg.nlu.language
        self.fuzzy = cfg.nlu.fuzzy
        self.fuzzy_min_score = 80.0  # rapidfuzz ratio (0-100) a correction needs
        self.fuzzy_margin = 10.0  # ... and how far ahead of the runner-up it must be
        self.home = home if home is not None else home_from_config(cfg.home)
        self.home_lists = self.home.slot_lists()
        self.problems: list[DomainProblem] = []
        self.domains: list[Domain] = []
        self.matchers: list[Matcher] = []

        local = load_domain(LOCAL_SENTENCES, name="hark")
        self.matchers.append(Matcher("hark", local.intents, self.home_lists,
                                     local.responses))
        paths = domain_files if domain_files is not None else domain_paths(
            cfg.nlu.domains_dir, cfg.nlu.builtin_domains)
        for path in paths:
            try:
                domain = load_domain(path)
            except DomainFileError as exc:
                self.problems.extend(exc.problems)
                log.error("skipping intent domain %s:\n%s", path,
                          "\n".join(f"  {p}" for p in exc.problems))
                continue
            self.domains.append(domain)
            self.matchers.append(Matcher(domain.name, domain.intents, self.home_lists,
                                         domain.responses))
        self.matchers.append(Matcher(HOMEASSISTANT, self._homeassistant_intents(),
                                     self.home_lists))

        self.paraphrase: Any = None  # hark.nlu.embed.ParaphraseMatcher when enabled
        if cfg.nlu.embedding_fallback:
            self.paraphrase = self._load_paraphrase()

        self._vocab: list[str] = self._fuzzy_vocabulary()
        self._vocab_set = set(self._vocab)
        self._cache_size = max(0, cfg.nlu.cache_size)  # 0: no cache
        # results by normalized text, a no-match (None) too; least recently used dropped
        self._cache: LRUCache[str, IntentResult | None] = LRUCache(self._cache_size)
        self._lock = threading.Lock()
        self._generation = 0  # set_home() calls: a match begun before one is not cached
        self.hits = 0
        self.misses = 0
        self.warmup()

    def _homeassistant_intents(self, home: Home | None = None) -> Intents:
        from home_assistant_intents import get_intents

        home = home if home is not None else self.home
        data = get_intents(self.language)
        if data is None:
            raise ConfigError(f"nlu.language: home-assistant-intents has no sentences for "
                              f"{self.language!r}", fix='use nlu.language = "en"')
        data = _without_absent_devices(_with_extra_sentences(data), home.domains)
        intents = Intents.from_dict(data)
        # Keep the sentences for device domains this home has (and every sentence not
        # tied to a domain: timers, time, weather, lists...): fewer templates, faster.
        return filter_intents(intents, domains=home.domains, keep_domainless=True)

    def _load_paraphrase(self) -> Any:
        """The paraphrase matcher over every matcher's intents; None (logged) when the
        embedding model is not installed."""
        from hark.errors import ModelError
        from hark.nlu.embed import ParaphraseMatcher, Source, load_embedder

        nlu = self.cfg.nlu
        cache_dir = self.cfg.home_path / "cache" / "nlu"
        try:
            return ParaphraseMatcher(
                load_embedder(nlu.embedding_backend, nlu.embedding_threads,
                              nlu.embedding_quantize, cache_dir),
                [Source(m.domain, m.intents, m.slot_lists) for m in self.matchers],
                examples_per_intent=nlu.embedding_examples,
                threshold=nlu.embedding_threshold, margin=nlu.embedding_margin,
                cache_dir=cache_dir)
        except ModelError as exc:
            log.warning("paraphrase fallback off: %s%s", exc,
                        f" (fix: {exc.fix})" if getattr(exc, "fix", "") else "")
            return None

    def _fuzzy_vocabulary(self, home_lists: dict[str, SlotList] | None = None) -> list[str]:
        """Spoken forms of the values a slot may be corrected to: home names, areas,
        floors and the user domains' own lists."""
        home_lists = home_lists if home_lists is not None else self.home_lists
        texts: set[str] = set()
        for name in ("name", "area", "floor"):
            texts.update(_list_texts(home_lists[name]))
        for domain in self.domains:
            lists = list(domain.intents.slot_lists.values())
            for intent in domain.intents.intents.values():
                for data in intent.data:
                    lists += list(data.slot_lists.values())
            for slot_list in lists:
                texts.update(_list_texts(slot_list))
        return sorted({normalize(t) for t in texts if len(t.strip()) >= 3} - {""})

    def set_home(self, home: Home) -> None:
        """Match against ``home`` from now on (a home read again from Home Assistant).

        The new matchers, lists and fuzzy vocabulary are built first, then swapped in
        under the lock with the cache cleared, so a :meth:`recognize` running meanwhile
        on another thread finishes with the old home (and does not cache its result). The paraphrase fallback's
        examples keep the old names; it spots slot values in the new lists."""
        lists = home.slot_lists()
        matchers = [dataclasses.replace(m, slot_lists=lists) for m in self.matchers
                    if m.domain != HOMEASSISTANT]
        matchers.append(Matcher(HOMEASSISTANT, self._homeassistant_intents(home), lists))
        vocab = self._fuzzy_vocabulary(lists)
        with self._lock:
            self.home, self.home_lists, self.matchers = home, lists, matchers
            self._vocab, self._vocab_set = vocab, set(vocab)
            self._cache.clear()
            self._generation += 1
        if self.paraphrase is not None:
            for source in getattr(self.paraphrase, "sources", []):
                source.slot_lists = dict(lists)

    def warmup(self) -> None:
        """Run a few sentences so first-use costs (template compilation) are paid now."""
        for text in ("what time is it", "turn on the light", "set a timer for 5 minutes",
                     "why is the sky blue", "turn on the kitchn lite"):
            self.match(text)

    # -- matching ------------------------------------------------------------------

    def recognize(self, text: str, context: dict[str, Any] | None = None,
                  paraphrase: bool = True) -> IntentResult | None:
        """The intent of ``text``; ``None`` when it is empty, too long or out of scope.

        ``context`` (e.g. ``{"area": "Kitchen"}``, the room of the satellite that heard
        it) overrides the stage's default area. ``paraphrase=False`` skips the
        embedding fallback (e.g. for partial transcripts).
        """
        if not text or len(text) > 4 * MAX_CHARS:
            return None
        key = normalize(text)
        if not key or len(key) > MAX_CHARS or key.count(" ") >= MAX_WORDS:
            return None
        if context:
            key += "\x00" + repr(sorted(context.items()))
        if not paraphrase and self.paraphrase is not None:
            key += "\x00strict"
        with self._lock:
            hit = self._cache.get(key, _MISS)
            if hit is not _MISS:
                self.hits += 1
                if hit is None:
                    return None
                # a template's match is marked as cached; a guessed one (fuzzy names, the
                # paraphrase fallback) keeps its source: the guard must see it was a guess
                source = "cache" if hit.source == "hassil" else hit.source
                return dataclasses.replace(hit, source=source, text=text, slots=dict(hit.slots))
            self.misses += 1
            generation = self._generation
        result = self.match(text, original=text, context=context, paraphrase=paraphrase)
        if self._cache_size:
            with self._lock:
                if generation != self._generation:  # matched against a home since replaced
                    return result
                self._cache[key] = (dataclasses.replace(result, slots=dict(result.slots))
                                    if result is not None else None)
        return result

    def match(self, text: str, original: str | None = None,
              context: dict[str, Any] | None = None, paraphrase: bool = True
              ) -> IntentResult | None:
        """Strict hassil matching, then fuzzy slot correction, then (when enabled)
        the paraphrase fallback; no cache."""
        original = original if original is not None else text
        if not text or len(text) > 4 * MAX_CHARS:
            return None
        norm = normalize(text)
        if not norm or len(norm) > MAX_CHARS or norm.count(" ") >= MAX_WORDS:
            return None
        if context is None:
            context = {"area": self.area} if self.area else {}
        result = self._strict(norm, context, original)
        if result is None:
            # the reason first, then the command: "i'm putting the rice on so set a
            # timer for 18 minutes", "it's stuffy in here, could you switch the fan on"
            tails = [norm.rsplit(" so ", 1)[1]] if " so " in norm else []
            if "," in original:
                tails.append(original.rsplit(",", 1)[1])
            for tail in map(normalize, tails):
                if tail.count(" ") >= 1 and tail != norm:
                    result = self._strict(tail, context, original)
                    if result is not None:
                        break
        if result is not None:
            return dataclasses.replace(result, text=original)
        if self.fuzzy:
            corrected = self._fuzzy(norm, context, original)
            if corrected is not None:
                return dataclasses.replace(corrected, text=original)
        if paraphrase and self.paraphrase is not None:
            try:
                found = self.paraphrase.recognize(norm)
            except Exception:  # the fallback must never take the assistant down
                log.exception("paraphrase fallback failed for %r", norm)
                found = None
            if found is not None:
                return dataclasses.replace(found, text=original)
        return None

    def _strict(self, text: str, context: dict[str, Any] | None = None,
                original: str = "") -> IntentResult | None:
        """The first matcher's match, in matcher order; but a match that needed a
        wildcard (free text such as a timer name) gives way to a later matcher's match
        without one, as hassil itself prefers literal text within one set of intents:
        "start a 5 minute and 10 second timer" is two durations, not a timer named
        "and 10 second". Wildcard values are taken from ``original`` as written."""
        fallback: IntentResult | None = None
        for matcher in self.matchers:
            try:
                found = recognize_best(text, matcher.intents, slot_lists=matcher.slot_lists,
                                       intent_context=context or None,
                                       language=self.language, best_slot_name="name")
            except Exception:  # a template bug must never take the assistant down
                log.exception("intent matching failed in domain %s for %r",
                              matcher.domain, text)
                continue
            if found is None:
                continue
            slots = {}
            for e in found.entities_list:
                value = _plain(e.value)
                if e.is_wildcard and isinstance(value, str) and original:
                    value = _original_span(value, original)
                slots[e.name] = value
            result = IntentResult(name=found.intent.name, slots=slots, text=text,
                                  source="hassil", domain=matcher.domain,
                                  response=found.response or "")
            if not any(e.is_wildcard for e in found.entities_list):
                return result
            if fallback is None:
                fallback = result
        return fallback

    def _fuzzy(self, text: str, context: dict[str, Any] | None = None,
               original: str = "") -> IntentResult | None:
        """Replace word spans that are clearly a misheard slot value, then re-match.

        A span is corrected only when its closest value scores at least
        ``fuzzy_min_score`` and beats the runner-up by ``fuzzy_margin``; the runner-up
        may be a shorter value inside the span ("kitchen like": "kitchen light" 80 vs
        the area "kitchen" 74), which is an alternative reading, so nothing is changed.
        Nor is a correction that only drops words or rewrites a function word
        (:func:`_plausible_correction`).
        """
        if not self._vocab:
            return None
        words = text.split()
        max_n = max(v.count(" ") for v in self._vocab) + 2
        spans: list[tuple[int, int, str]] = []
        for n in range(1, min(max_n, len(words)) + 1):
            for i in range(len(words) - n + 1):
                gram = " ".join(words[i:i + n])
                if len(gram) >= 3 and gram not in self._vocab_set:
                    spans.append((i, i + n, gram))
        if not spans:
            return None
        scores = process.cdist([s[2] for s in spans], self._vocab, scorer=fuzz.ratio,
                               workers=1)
        candidates = []
        for row, (start, end, gram) in enumerate(spans):
            order = scores[row].argsort()[::-1]
            best = float(scores[row][order[0]])
            second = float(scores[row][order[1]]) if len(order) > 1 else 0.0
            value = self._vocab[order[0]]
            if (best >= self.fuzzy_min_score and best - second >= self.fuzzy_margin
                    and _plausible_correction(gram, value)):
                candidates.append((best, end - start, start, end, value))
        if not candidates:
            return None
        candidates.sort(reverse=True)
        taken: set[int] = set()
        chosen = []
        for score, _, start, end, value in candidates:
            if taken.isdisjoint(range(start, end)):
                taken.update(range(start, end))
                chosen.append((start, end, value, score))
        chosen.sort()
        out: list[str] = []
        pos = 0
        for start, end, value, _ in chosen:
            out += words[pos:start] + [value]
            pos = end
        out += words[pos:]
        result = self._strict(" ".join(out), context, original)
        if result is None:
            return None
        confidence = min(score for *_, score in chosen) / 100.0
        return dataclasses.replace(result, source="fuzzy", confidence=confidence)

    # -- cache ---------------------------------------------------------------------

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self.hits = self.misses = 0

    def cache_info(self) -> dict[str, int]:
        with self._lock:
            return {"size": len(self._cache), "max_size": self._cache_size,
                    "hits": self.hits, "misses": self.misses}

    def responses(self, domain: str) -> dict[str, str]:
        """The reply templates a domain file gave (``responses:``), by intent name."""
        for matcher in self.matchers:
            if matcher.domain == domain:
                return matcher.responses
        return {}


HA_EXTRA = Path(__file__).with_name("ha_extra.yaml")


# Domains Home Assistant answers for without a device in hark's [home]: the weather
# integration, to-do lists
SERVICE_DOMAINS = frozenset({"weather", "todo"})


def _without_absent_devices(data: dict, domains: set[str] | frozenset[str]) -> dict:
    """Home Assistant's intent data without the intents for a kind of device this home
    has none of (vacuums, lawn mowers...): an intent whose every domain-bound sentence
    block names only absent domains goes, with its domain-free blocks, which
    ``filter_intents`` keeps ("clean the kitchen" is no command in a home without a
    vacuum, and "the kitchen is a mess" must not come near it)."""
    keep = set(domains) | SERVICE_DOMAINS
    out = dict(data)
    out["intents"] = {}
    for name, intent in (data.get("intents") or {}).items():
        bound: set[str] = set()
        for block in intent.get("data", []):
            names = ((block.get("requires_context") or {}).get("domain")
                     or (block.get("slots") or {}).get("domain"))
            if names:
                bound |= {names} if isinstance(names, str) else set(names)
        if bound and not bound & keep:
            continue
        out["intents"][name] = intent
    return out


def _with_extra_sentences(data: dict, path: Path = HA_EXTRA) -> dict:
    """Home Assistant's intent data with hark's extra sentences (``ha_extra.yaml``)
    appended to each intent's ``data``, and its ``lists`` added (a copy: the package's
    cached dict is shared)."""
    import copy

    import yaml

    extra = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = copy.copy(data)
    out["intents"] = dict(data.get("intents", {}))
    for name, intent in (extra.get("intents") or {}).items():
        if name not in out["intents"]:
            continue  # an intent this version of the package does not have
        merged = dict(out["intents"][name])
        merged["data"] = list(merged.get("data", [])) + list(intent.get("data", []))
        out["intents"][name] = merged
    out["lists"] = {**(data.get("lists") or {}), **(extra.get("lists") or {})}
    return out


def load_nlu(cfg: Config, home: Home | None = None) -> IntentStage:
    """Build the intent stage for ``cfg`` (hassil structures are built once, here)."""
    start = time.perf_counter()
    stage = IntentStage(cfg, home=home)
    log.info("intent stage ready in %.0f ms: %d domains (%s), %d files skipped",
             (time.perf_counter() - start) * 1000, len(stage.matchers),
             ", ".join(m.domain for m in stage.matchers), len(stage.problems))
    return stage
