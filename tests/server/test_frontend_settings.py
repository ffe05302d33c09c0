"""Settings: flags and DUPLEX_* variables (a flag wins), each checked with a message that names
the rule; `duplex serve` exits 2 on a bad one."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.frontend.call import rtc_configuration
from server.serve import main as serve_main
from server.settings import SHIPPED_CHECKPOINT, Settings, parse_settings


def test_flags_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("DUPLEX_PORT", "9001")
    monkeypatch.setenv("DUPLEX_MAX_SESSIONS", "3")
    monkeypatch.setenv("DUPLEX_AUTH_TOKEN", "from-env")
    s = parse_settings(["--port", "9002", "--preset", "tiny"])
    assert (s.port, s.max_sessions, s.preset) == (9002, 3, "tiny")
    assert s.auth_token is not None and s.auth_token.get_secret_value() == "from-env"
    assert "from-env" not in repr(s), "the token is never printed"


def test_the_defaults_serve_the_shipped_checkpoint_on_loopback_8080(monkeypatch):
    for key in ("DUPLEX_PORT", "DUPLEX_HOST", "DUPLEX_PRESET", "DUPLEX_CHECKPOINT"):
        monkeypatch.delenv(key, raising=False)
    s = parse_settings([])
    assert (s.host, s.port, s.transport, s.max_sessions) == ("127.0.0.1", 8080, "auto", 1)
    assert s.checkpoint_folder == SHIPPED_CHECKPOINT and (SHIPPED_CHECKPOINT / "model.safetensors").is_file()
    assert s.loopback and s.ice_servers == []


@pytest.mark.parametrize("argv, folder, dummy", [
    pytest.param(["--preset", "tiny"], None, "tiny", id="a-preset-is-dummy-weights"),
    pytest.param(["--checkpoint", "dummy"], None, "cpu", id="dummy"),
    pytest.param(["--checkpoint", "dummy", "--preset", "base"], None, "base", id="dummy-base"),
    pytest.param(["--checkpoint", "runs/x/checkpoint"], "runs/x/checkpoint", "cpu", id="a-folder"),
    pytest.param(["--checkpoint", "runs/x", "--preset", "base"], "runs/x", "base", id="a-folder-wins"),
])
def test_the_weights_served_are_a_checkpoint_or_a_presets_dummy(monkeypatch, argv, folder, dummy):
    monkeypatch.delenv("DUPLEX_PRESET", raising=False)
    s = parse_settings(argv)
    assert (s.checkpoint_folder, s.dummy_preset) == (None if folder is None else Path(folder), dummy)


def test_ice_servers_come_as_json_and_become_the_rtc_configuration(monkeypatch):
    monkeypatch.setenv("DUPLEX_ICE_SERVERS", '[{"urls": ["stun:stun.example.org:3478"]}, '
                                             '{"urls": ["turn:turn.example.org"], "username": "u", "credential": "p"}]')
    s = parse_settings([])
    config = rtc_configuration(s.ice_servers)
    assert [x.urls for x in config.iceServers] == [["stun:stun.example.org:3478"], ["turn:turn.example.org"]]
    assert config.iceServers[1].username == "u"
    assert rtc_configuration([]).iceServers == [], "never aiortc's default public STUN server"


@pytest.mark.parametrize("field, value, says", [
    pytest.param("preset", "huge", "unknown preset 'huge'", id="preset"),
    pytest.param("port", 0, "greater than or equal to 1", id="port"),
    pytest.param("devices", "0,gpu1", "comma-separated GPU indices", id="devices"),
    pytest.param("transport", "carrier-pigeon", "'auto', 'gloo', 'ipc' or 'nccl'", id="transport"),
    pytest.param("ice_servers", [{"urls": ["http://x"]}], "must start with stun:", id="ice-url"),
])
def test_a_bad_setting_names_the_rule(field, value, says):
    with pytest.raises(ValidationError, match=says):
        Settings(**{field: value})


def test_duplex_serve_exits_2_on_a_bad_flag(capsys):
    assert serve_main(["--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
