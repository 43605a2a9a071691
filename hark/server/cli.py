"""``hark serve``: the server satellites connect to (and the Wyoming service)."""

from __future__ import annotations

import argparse


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from hark.cli import load_cfg
    from hark.pipeline.assistant import Assistant
    from hark.server.server import Server

    cfg = load_cfg(args)
    if args.host:
        cfg.server.host = args.host
    log = logging.getLogger("hark.serve")
    log.info("loading models...")
    assistant = Assistant.load(cfg)

    async def main() -> None:
        server = Server(cfg, assistant)
        await server.start()
        wyoming = None
        if not args.no_wyoming:
            from hark.server.wyoming import start_wyoming

            wyoming = await start_wyoming(cfg, assistant)
        try:
            await server.serve_forever()
        finally:
            await server.stop()
            if wyoming is not None:
                await wyoming.stop()

    try:
        asyncio.run(main())
    finally:
        assistant.close()
    return 0


def register(cli) -> None:
    p = cli.add("serve", "run the hark server for satellites (and Wyoming clients)", _serve)
    p.add_argument("--host", default="", help="address to listen on (default server.host, "
                   "127.0.0.1); remote satellites then need server.tokens")
    p.add_argument("--no-wyoming", action="store_true", help="do not serve the Wyoming protocol")
