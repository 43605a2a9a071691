"""Config: defaults, TOML files, overrides, and clear errors."""

from __future__ import annotations

import tomllib

import pytest

from hark.cli import main
from hark.config import Config, dump_toml, load_config, parse_override
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
