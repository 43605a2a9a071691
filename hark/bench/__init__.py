"""hark.bench: every benchmark and evaluation, apart from the runtime stages they measure.

The stages import nothing from here; the commands are registered in :mod:`hark.bench.cli`.

- :mod:`hark.bench.latency` -- ``hark bench latency``: streaming pipeline vs sequential
  baseline, per stage.
- :mod:`hark.bench.llm` -- ``hark bench llm``: first token, speed and accuracy per LLM
  profile; :func:`~hark.bench.llm.bench_isolation`, the cost of the LLM child process.
- :mod:`hark.bench.transport` -- ``hark bench transport``: the network audio path under
  loss, jitter and reordering; the shared-memory ring's latency.
- :mod:`hark.bench.load` -- ``hark bench load``: N simulated satellites against a server.
- :mod:`hark.bench.abuse` -- ``hark bench abuse``: hostile clients against a live server.
- :mod:`hark.bench.corpus` -- ``hark bench corpus``: spoken corpora in voices hark was not
  built with.
- :mod:`hark.bench.eval_intents` -- ``hark eval intents``: typed commands and open
  questions scored (the sentence files are in ``hark/nlu/eval/``).
- :mod:`hark.bench.eval_guard` -- ``hark eval guard``: what the guard lets through, on
  labelled sentences (``hark/nlu/eval/guard_cases.yaml``).
- :mod:`hark.bench.eval_speech` -- ``hark eval speech-intents``: spoken commands through
  VAD, the constrained recognizer and Whisper, scored.
- :mod:`hark.bench.eval_wake` -- ``hark eval wake``: wake word detection, false accepts
  per hour, latency, CPU; :mod:`hark.bench.augment` makes its augmented streams.
"""
