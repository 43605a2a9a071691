"""``hark satellite``: wake word, microphone and speaker by the person; models on the
server."""

from __future__ import annotations

import argparse


def _satellite(args: argparse.Namespace) -> int:
    import asyncio

    from hark.cli import load_cfg
    from hark.satellite.audio import (
        FileSource,
        MicSource,
        SpeakerSink,
        StdinSource,
        WavSink,
    )
    from hark.satellite.satellite import FRAME, Satellite

    cfg = load_cfg(args)
    if args.server:
        cfg.satellite.server = args.server
    if args.name:
        cfg.satellite.name = args.name
    if getattr(args, "area", ""):
        cfg.satellite.area = args.area
    if args.token:
        from hark.auth import check_token

        check_token(args.token, "--token")
        cfg.satellite.token = args.token
    if args.input:
        source = FileSource(args.input, FRAME)
    elif args.stdin:
        source = StdinSource(FRAME)
    else:
        source = MicSource(cfg.audio.input_device, FRAME)
    sink = WavSink(args.output) if args.output else SpeakerSink(cfg.audio.output_device)
    sat = Satellite(cfg, source, sink, exit_when_done=bool(args.input or args.stdin))
    try:
        asyncio.run(sat.run())
    except KeyboardInterrupt:
        pass
    s = sat.stats
    print(f"wakes {s.wakes}, turns {s.turns_done}, barge-ins {s.barge_ins}, "
          f"reply frames played {s.frames_played}")
    if s.udp_fallbacks or s.udp_restored:
        print(f"UDP audio fell back to TCP in {s.udp_fallbacks} turn(s) ({s.frames_resent} "
              f"frames resent), back on UDP {s.udp_restored} time(s)")
    return 0


def register(cli) -> None:
    p = cli.add("satellite", "run a satellite: wake word + audio, talking to a hark server",
                _satellite)
    p.add_argument("--server", default="", help="HOST:PORT (default satellite.server)")
    p.add_argument("--name", default="", help="satellite name (default satellite.name)")
    p.add_argument("--area", default="", help="the room it stands in, as named in the "
                   "home: 'turn on the lights' said to it means the lights there "
                   "(default satellite.area)")
    p.add_argument("--token", default="", help="the server's token ('hark token show' on "
                   "the server) or this satellite's own (server.tokens); default "
                   "satellite.token, else the token file of a server on this machine")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", default="", help="WAV/FLAC file instead of the microphone "
                     "(played at real time; exits when its turns are answered)")
    src.add_argument("--stdin", action="store_true", help="raw 16 kHz mono s16le PCM on stdin")
    p.add_argument("--output", default="", help="write reply audio to this WAV instead of "
                   "the speaker")
