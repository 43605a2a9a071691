"""``hark serve``: the server satellites connect to (and the Wyoming service)."""

from __future__ import annotations

import argparse


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal
    import sys

    from hark.auth import ensure_server_token
    from hark.cli import load_cfg
    from hark.pipeline.assistant import Assistant
    from hark.server.server import Server

    from hark.sched import apply_loop_sched
    from hark.server.http import Loading, start_http
    from hark.server.server import BUSY_TEXT
    from hark.config import parse_uri, validate

    cfg = load_cfg(args)
    if args.host:
        cfg.server.host = args.host
    for uri in args.wyoming_satellite or []:
        parse_uri(uri, ("tcp",), "--wyoming-satellite")  # a clear error naming the flag
        if uri not in cfg.server.wyoming_satellites:
            cfg.server.wyoming_satellites.append(uri)
    for uri in args.esphome or []:
        parse_uri(uri, ("esphome",), "--esphome")  # a clear error naming the flag
        if uri not in cfg.server.esphome_satellites:
            cfg.server.esphome_satellites.append(uri)
    validate(cfg)
    token = ensure_server_token(cfg)  # before any listener: every one asks for it
    if not args.no_wyoming:  # a Wyoming port open beyond this machine: fail before loading
        from hark.server.wyoming import check_wyoming_access

        check_wyoming_access(cfg.server.wyoming_host, cfg.server.wyoming_allow)
    if cfg.llm.isolation == "auto":
        # a long-running service: a crash in llama.cpp must cost one answer, not every
        # satellite's connection (hark.llm.worker restarts the model process)
        cfg.llm.isolation = "process"
    log = logging.getLogger("hark.serve")
    holder: dict = {}

    async def main() -> None:
        loop_sched = apply_loop_sched(cfg) if cfg.sched.realtime else []
        # health and the page answer ("starting") while the models load and warm up
        http = await start_http(Loading(), cfg, token=token)
        log.info("http on %s (health, metrics, live page)", http.url)
        if sys.stdout.isatty():  # the terminal only: logs are read by more people
            print(f"live page (this URL logs a browser in; keep it secret):\n  "
                  f"{http.login_url()}", flush=True)
        else:
            log.info("log a browser in to the live page with the URL that "
                     "'hark token show --url' prints")
        from hark.nlu.ha_client import keep_current, sync_from_config

        # the home from Home Assistant (home.home_assistant_url and a token); down or
        # refusing the token: one clear log line, [home] meanwhile, retried with backoff
        ha_sync = holder["ha"] = sync_from_config(cfg.home)
        synced = None
        if ha_sync is not None:
            log.info("reading the home from Home Assistant at %s",
                     cfg.home.home_assistant_url)
            synced = await ha_sync.start(cfg.home.home_assistant_timeout_s)
        log.info("loading models...")
        loop = asyncio.get_running_loop()
        assistant = holder["a"] = await loop.run_in_executor(
            None, lambda: Assistant.load(cfg, sched=cfg.sched.realtime, home=synced))
        if ha_sync is not None:
            await keep_current(ha_sync, assistant.set_home, synced)
        await loop.run_in_executor(None, assistant.prepare_phrases, [BUSY_TEXT])
        server = Server(cfg, assistant)
        server.sched_results = loop_sched + assistant.sched_results
        await server.start()
        http.set_server(server)
        timers = getattr(getattr(assistant, "handlers", None), "timers", None)
        if timers is not None:  # kept across restarts; those that ended meanwhile fire now
            from hark.nlu.timers import timers_path

            assistant._loop = loop  # their announcements need the loop before any turn
            await loop.run_in_executor(None, timers.persist, timers_path(cfg))
        wyoming = None
        if not args.no_wyoming:
            from hark.server.wyoming import start_wyoming

            # its transcribe/synthesize/handle/pipeline work shares the satellites' turn
            # slots (server.max_concurrent_turns)
            wyoming = await start_wyoming(cfg, assistant, turn_slots=server.turn_slots)
        satellites = None
        if cfg.server.wyoming_satellites:
            from hark.server.wyoming_satellite import start_wyoming_satellites

            # their turns reach the trace log, metrics and live page like the others
            satellites = await start_wyoming_satellites(
                cfg, assistant, turn_listeners=server.turn_listeners)
            server.other_sessions.append(satellites.owns)
        esphome = None
        if cfg.server.esphome_satellites:
            from hark.server.esphome_satellite import start_esphome_satellites

            # replies reach devices that play a URL through this HTTP server
            esphome = await start_esphome_satellites(
                cfg, assistant, http=http, turn_listeners=server.turn_listeners)
            server.other_sessions.append(esphome.owns)
        log.info("hark ready: control %s:%s, http %s", cfg.server.host, server.control_port,
                 http.url)
        serving = asyncio.create_task(server.serve_forever())
        for sig in (signal.SIGTERM, signal.SIGINT):
            # a clean stop: turns in flight are cancelled, satellites told, sockets closed
            loop.add_signal_handler(sig, serving.cancel)
        try:
            await serving
        except asyncio.CancelledError:
            log.info("stopping (signal)")
        finally:
            if holder.get("ha") is not None:
                await holder["ha"].stop()
            if satellites is not None:
                await satellites.stop()
            if esphome is not None:
                await esphome.stop()
            await server.stop()
            if wyoming is not None:
                await wyoming.stop()
            await http.close()

    try:
        asyncio.run(main())
    finally:
        if "a" in holder:
            holder["a"].close()
    return 0


def _token_show(args: argparse.Namespace) -> int:
    from hark.auth import ensure_server_token, token_path
    from hark.cli import load_cfg

    cfg = load_cfg(args)
    token = ensure_server_token(cfg)
    if args.url:
        from hark.server.http import login_url

        print(login_url(cfg.server.host, cfg.server.http_port, token))
    elif args.path:
        print(token_path(cfg))
    else:
        print(token)
    return 0


def register(cli) -> None:
    t = cli.add("token show", "print the server token (made on first use) that satellites, "
                "HTTP clients and browsers need", _token_show)
    what = t.add_mutually_exclusive_group()
    what.add_argument("--url", action="store_true",
                      help="print the URL that logs a browser in to the live page")
    what.add_argument("--path", action="store_true", help="print where the token file is")
    p = cli.add("serve", "run the hark server for satellites (and Wyoming clients)", _serve)
    p.add_argument("--host", default="", help="address to listen on (default server.host, "
                   "127.0.0.1); every satellite needs the server token ('hark token "
                   "show') or its own server.tokens entry")
    p.add_argument("--no-wyoming", action="store_true", help="do not serve the Wyoming protocol")
    p.add_argument("--wyoming-satellite", action="append", metavar="URI",
                   help="drive the wyoming-satellite at tcp://HOST:PORT as Home Assistant "
                   "does (repeatable; added to server.wyoming_satellites)")
    p.add_argument("--esphome", action="append", metavar="URI",
                   help="drive the ESPHome voice satellite at esphome://HOST:PORT (its API "
                   "port, 6053) as Home Assistant does (repeatable; added to "
                   "server.esphome_satellites; its encryption key goes in the config file, "
                   "server.esphome_keys)")
