"""hark.bargein: hearing the person over the reply that is playing.

- :mod:`hark.bargein.echo` -- echo removal: the echo path's delay, and an adaptive
  canceller that learns the room.
- :mod:`hark.bargein.detector` -- :class:`~hark.bargein.detector.BargeInDetector` and
  :class:`~hark.bargein.detector.PlaybackListener`: voice activity on what is left once
  the reply's echo is removed.

Used by the satellite (:mod:`hark.satellite.satellite`) and by ``hark listen``
(:mod:`hark.pipeline.live`). It depends on numpy, :mod:`hark.audio` and the VAD's
interface (:class:`hark.vad.base.VadEngine`) only: never on the pipeline or the server,
so a satellite-only install has everything it needs.
"""
