"""hark.llm: the language-model stage.

- :mod:`hark.llm.service` -- :func:`load_llm` and :class:`LlmService`, what the pipeline
  calls: ``reply_stream(text, session, cacheable, trace)`` yields cleaned, speakable text
  pieces; ``last_source`` says who answered (template / cache / llm / error);
  ``prefill(partial, session)`` reads a partial transcript ahead of the end of turn.
- :mod:`hark.llm.llama` -- llama.cpp in-process (GGUF), KV prefix reuse, token counts.
- :mod:`hark.llm.openai_http` -- any OpenAI-compatible server (llama.cpp, vLLM, Ollama).
- :mod:`hark.llm.worker` -- llama.cpp in a supervised child process, restarted after a crash.
- :mod:`hark.llm.cli` -- ``hark llm ask`` (``hark bench llm`` is :mod:`hark.bench.llm`).
"""
