"""Config: defaults, TOML files, overrides, and clear errors."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import tomllib
from typing import Literal, get_args, get_origin, get_type_hints

import pytest

from hark.cli import main
from hark.config import (REDACTED, Config, dump_toml, load_config, parse_override, to_dict,
                         validate, write_config)
from hark.errors import ConfigError


def test_defaults_round_trip_through_toml():
    text = dump_toml(Config())
    data = tomllib.loads(text)
    assert data["llm"]["profile"] == "fast"
    assert data["server"]["host"] == "127.0.0.1"  # nothing listens beyond localhost


def test_file_and_overrides(tmp_path):
    p = tmp_path / "hark.toml"
    p.write_text('[llm]\nprofile = "quality"\n[vad]\neot_short_ms = 150\n')
    cfg = load_config(str(p), parse_override("asr.beam_size=2"))
    assert cfg.llm.profile == "quality" and cfg.vad.eot_short_ms == 150 and cfg.asr.beam_size == 2


def test_unknown_key_suggests_the_right_one(tmp_path):
    p = tmp_path / "hark.toml"
    p.write_text("[llm]\nprofle = 'x'\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(p))
    assert "llm.profle" in str(err.value) and "profile" in str(err.value)


def test_wrong_type_and_bad_toml(tmp_path):
    p = tmp_path / "hark.toml"
    p.write_text("[vad]\neot_short_ms = 'fast'\n")
    with pytest.raises(ConfigError, match="vad.eot_short_ms"):
        load_config(str(p))
    p.write_text("[vad\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(p))


def test_config_show_cli(tmp_path, capsys):
    p = tmp_path / "hark.toml"
    p.write_text('[tts]\nlength_scale = 0.9\n')
    assert main(["--config", str(p), "config", "show"]) == 0
    assert "length_scale = 0.9" in capsys.readouterr().out
    p.write_text("[nope]\n")
    assert main(["--config", str(p), "config", "show"]) == 1
    assert "unknown config key 'nope'" in capsys.readouterr().err


# --- choices, ranges and tokens, checked at load ------------------------------------------

def _fields(obj=None, where=""):
    """(dotted key, dataclass field, type hint) of every leaf field of the config."""
    obj = Config() if obj is None else obj
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, key)
        else:
            yield key, f, hints[f.name]


LITERALS = {key: get_args(hint) for key, _, hint in _fields() if get_origin(hint) is Literal}
RANGES = {key: f.metadata["range"] for key, f, _ in _fields() if "range" in f.metadata}
SECRETS = {key for key, f, _ in _fields() if f.metadata.get("secret")}


def _set(key: str, value) -> dict:
    out: dict = {}
    node = out
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def test_the_fixed_sets_are_literals():
    # the keys that take one of a few fixed words: each is declared as a Literal
    assert {"asr.backend", "asr.device", "asr.compute_type", "nlu.embedding_backend",
            "nlu.embedding_quantize", "llm.backend", "llm.isolation", "tts.engine",
            "wake.verifier", "wake.echo_canceller", "transport.codec",
            "transport.tcp_audio_fallback", "transport.shm", "transport.frame_ms",
            "audio.sample_rate"} == set(LITERALS)
    assert LITERALS["llm.isolation"] == ("auto", "thread", "process")
    assert "int8_float16" in LITERALS["asr.compute_type"]


@pytest.mark.parametrize("key", sorted(LITERALS))
def test_every_literal_key_refuses_a_value_outside_its_choices(key):
    choices = LITERALS[key]
    bad = "not-a-choice" if isinstance(choices[0], str) else 33
    with pytest.raises(ConfigError) as err:
        load_config("/dev/null", _set(key, bad))
    allowed = ", ".join(repr(c) for c in choices)
    assert str(err.value).startswith(f"config: {key} must be one of {allowed}, not {bad!r}")
    for choice in choices:  # and takes each of them
        overrides = _set(key, choice)
        if choice == "wyoming":  # a remote engine needs its service's address too
            overrides[key.split(".")[0]]["wyoming_uri"] = "tcp://127.0.0.1:10300"
        cfg = load_config("/dev/null", overrides)
        assert to_dict(cfg)[key.split(".")[0]][key.split(".")[1]] == choice


def test_a_misspelt_choice_names_the_key_the_choices_and_the_fix(tmp_path):
    p = tmp_path / "hark.toml"
    p.write_text('[llm]\nisolation = "proces"\n')
    with pytest.raises(ConfigError) as err:
        load_config(str(p))
    assert str(err.value).splitlines()[0] == \
        "config: llm.isolation must be one of 'auto', 'thread', 'process', not 'proces'"
    assert err.value.fix == "did you mean 'process'?"
    # --set goes through the same check, and the CLI prints it as an error
    with pytest.raises(ConfigError, match="wake.echo_canceller must be one of"):
        load_config("/dev/null", parse_override("wake.echo_canceller=subtrac"))


def test_a_literal_number_is_not_matched_by_a_float_or_a_string():
    for bad in (20.0, "20", True):
        with pytest.raises(ConfigError, match=r"transport.frame_ms must be one of 10, 20, 40, 60"):
            load_config("/dev/null", _set("transport.frame_ms", bad))


def test_the_defaults_are_valid():
    assert validate(Config()) is not None
    for key, rng in RANGES.items():
        section, name = key.split(".") if "." in key else ("", key)
        assert to_dict(Config())[section][name] in rng, key


def _outside(rng):
    """Values just outside a range: below its low bound, above its high one."""
    out = []
    if rng.lo is not None:
        out.append(rng.lo if rng.lo_open else rng.lo - 1)
    if rng.hi is not None:
        out.append(rng.hi if rng.hi_open else rng.hi + 1)
    return out


@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_ranged_key_refuses_a_value_outside_its_range(key):
    rng = RANGES[key]
    assert _outside(rng), key
    for bad in _outside(rng):
        with pytest.raises(ConfigError) as err:
            load_config("/dev/null", _set(key, bad))
        head, _, shown = str(err.value).rpartition(", not ")
        assert head == f"config: {key} must be {rng}" and float(shown) == bad
    for bound in (rng.lo, rng.hi):  # a closed bound itself is allowed
        if bound is not None and not (bound == rng.lo and rng.lo_open) \
                and not (bound == rng.hi and rng.hi_open):
            overrides = _set(key, bound)
            if key == "transport.jitter_max_ms":  # never under jitter_min_ms
                overrides["transport"]["jitter_min_ms"] = 0
            load_config("/dev/null", overrides)


@pytest.mark.parametrize("key, value, message", [
    ("server.control_port", 0, "config: server.control_port must be between 1 and 65535, not 0"),
    ("server.http_port", 70000,
     "config: server.http_port must be between 1 and 65535, not 70000"),
    ("server.max_concurrent_turns", 0,
     "config: server.max_concurrent_turns must be at least 1, not 0"),
    ("server.max_sessions", 0, "config: server.max_sessions must be at least 1, not 0"),
    ("llm.timeout_s", 0, "config: llm.timeout_s must be greater than 0, not 0.0"),
    ("vad.threshold", 1.5, "config: vad.threshold must be between 0 and 1, not 1.5"),
    ("wake.verifier_threshold", 1,
     "config: wake.verifier_threshold must be greater than 0 and less than 1, not 1.0"),
    ("sched.rt_priority", 100, "config: sched.rt_priority must be between 1 and 99, not 100"),
    ("llm.n_gpu_layers", -2, "config: llm.n_gpu_layers must be at least -1, not -2"),
])
def test_range_errors_name_the_key_the_value_and_the_range(key, value, message):
    with pytest.raises(ConfigError) as err:
        load_config("/dev/null", _set(key, value))
    assert str(err.value) == message


def test_nan_and_inf_are_out_of_every_range(tmp_path):
    p = tmp_path / "hark.toml"
    for text in ("nan", "inf", "-inf"):
        p.write_text(f"[llm]\ntimeout_s = {text}\n")
        with pytest.raises(ConfigError, match="llm.timeout_s must be greater than 0"):
            load_config(str(p))
    p.write_text("[vad]\nthreshold = nan\n")
    with pytest.raises(ConfigError, match="vad.threshold must be between 0 and 1, not nan"):
        load_config(str(p))


def test_jitter_bounds_in_order():
    with pytest.raises(ConfigError, match="jitter_max_ms .50. must be at least "
                                          r"transport.jitter_min_ms \(60\)"):
        load_config("/dev/null", {"transport": {"jitter_min_ms": 60, "jitter_max_ms": 50}})
    load_config("/dev/null", {"transport": {"jitter_min_ms": 60, "jitter_max_ms": 60}})


SHORT = "s3cret-kitchen"  # 14 characters
GOOD = "kitchen-token-0123456789"


def test_short_or_empty_server_tokens_are_refused_without_showing_them(tmp_path):
    p = tmp_path / "hark.toml"
    p.write_text(f'[server.tokens]\nkitchen = "{SHORT}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(str(p))
    assert str(err.value).startswith("config: server.tokens.kitchen is 14 characters long; "
                                     "a token must be at least 16 characters")
    assert SHORT not in str(err.value) and "secrets.token_urlsafe" in err.value.fix
    p.write_text('[server]\ntokens = { kitchen = "" }\n')
    with pytest.raises(ConfigError, match="server.tokens.kitchen is empty; a token must"):
        load_config(str(p))
    p.write_text('[server]\ntokens = { kitchen = 1234567890123456789 }\n')
    with pytest.raises(ConfigError, match="server.tokens.kitchen must be a string"):
        load_config(str(p))
    p.write_text(f'[server.tokens]\nkitchen = "{"x" * 16}"\noffice = "{GOOD}"\n')
    assert load_config(str(p)).server.tokens == {"kitchen": "x" * 16, "office": GOOD}


def test_satellite_token_is_empty_or_long_enough():
    assert load_config("/dev/null", _set("satellite.token", "")).satellite.token == ""
    with pytest.raises(ConfigError) as err:
        load_config("/dev/null", _set("satellite.token", SHORT))
    assert "satellite.token is 14 characters long" in str(err.value)
    assert SHORT not in str(err.value)


def test_a_secret_of_the_wrong_type_is_not_echoed():
    with pytest.raises(ConfigError) as err:
        load_config("/dev/null", _set("llm.openai_api_key", 987654321987))
    assert "llm.openai_api_key" in str(err.value) and "987654321987" not in str(err.value)


def test_cli_set_with_a_bad_choice_fails_clearly(capsys):
    assert main(["--set", "llm.isolation=proces", "config", "show"]) == 1
    err = capsys.readouterr().err
    assert "config: llm.isolation must be one of 'auto', 'thread', 'process', not 'proces'" in err


# --- writing and showing ------------------------------------------------------------------

AWKWARD = 'Line one.\nLine "two" \\ with a backslash,\ttab, émoji 🙂 and \'quotes\'\n'


def _awkward_config(tmp_path) -> Config:
    cfg = Config(home_dir=str(tmp_path / "hömé"))
    cfg.llm.system_prompt = AWKWARD
    cfg.asr.initial_prompt = "Ünïcode, \"quoted\", \\back\\slashes\\"
    cfg.home.entities = [{"name": 'the "big" lamp', "domain": "light", "area": "hall\nway"}]
    cfg.server.tokens = {"kitchen": GOOD, "living room": "a" * 20}
    cfg.satellite.token = GOOD
    cfg.sched.pin_cores = {"llm": [0, 1]}
    return cfg


def test_toml_round_trip_with_newlines_quotes_and_unicode(tmp_path):
    cfg = _awkward_config(tmp_path)
    assert tomllib.loads(dump_toml(cfg, redact=False)) == to_dict(cfg)
    path = write_config(cfg, tmp_path / "hark.toml")
    assert to_dict(load_config(str(path))) == to_dict(cfg)


def test_written_config_is_private_and_keeps_a_stricter_mode(tmp_path):
    path = tmp_path / "hark.toml"
    write_config(Config(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # world-readable before: group read kept, world read dropped
    write_config(Config(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    path.chmod(0o400)
    write_config(Config(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the owner can still write it
    assert os.listdir(tmp_path) == ["hark.toml"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "hark.toml"
    path.write_text('[tts]\nlength_scale = 0.9\n')

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ConfigError, match="cannot write config .*Input/output error"):
        write_config(Config(), path)
    assert path.read_text() == '[tts]\nlength_scale = 0.9\n'
    assert os.listdir(tmp_path) == ["hark.toml"]
    with pytest.raises(ConfigError, match="cannot write config"):
        write_config(Config(), tmp_path / "missing" / "hark.toml")


def test_every_secret_is_redacted_by_show_and_kept_out_of_repr(tmp_path, capsys):
    assert SECRETS == {"home.home_assistant_token", "llm.openai_api_key", "server.tokens",
                       "satellite.token", "server.esphome_keys"}
    cfg = _awkward_config(tmp_path)
    cfg.home.home_assistant_token = "ha-long-lived-token-value"
    cfg.llm.openai_api_key = "sk-openai-api-key-value"
    values = [GOOD, "a" * 20, "ha-long-lived-token-value", "sk-openai-api-key-value"]
    shown = dump_toml(cfg)
    data = tomllib.loads(shown)
    assert data["server"]["tokens"] == {"kitchen": REDACTED, "living room": REDACTED}
    assert data["satellite"]["token"] == data["home"]["home_assistant_token"] == REDACTED
    assert data["llm"]["openai_api_key"] == REDACTED
    assert data["llm"]["system_prompt"] == AWKWARD  # nothing else touched
    assert tomllib.loads(dump_toml(Config()))["satellite"]["token"] == ""  # unset: shown as unset
    text = repr(cfg) + str(cfg)
    for value in values:
        assert value not in shown and value not in text
    # the CLI: show redacts; --output writes the real values, privately
    path = write_config(cfg, tmp_path / "in.toml")
    assert main(["--config", str(path), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert REDACTED in out and not any(v in out for v in values)
    target = tmp_path / "out.toml"
    assert main(["--config", str(path), "config", "show", "--output", str(target)]) == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert load_config(str(target)).server.tokens == cfg.server.tokens


def test_loading_logs_no_secret(tmp_path, caplog):
    path = write_config(_awkward_config(tmp_path), tmp_path / "hark.toml")
    with caplog.at_level(logging.DEBUG):
        main(["--config", str(path), "-v", "config", "show"])
    assert GOOD not in caplog.text
