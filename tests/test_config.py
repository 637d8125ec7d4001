"""The settings file: parsing with line-numbered errors, and the precedence argument > file >
default in Tunnel."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eophis_hpc as eh
from eophis_hpc import config


def test_round_trip_and_precedence(tmp_path, monkeypatch):
    text = config.dumps({"strategy": "datatype", "backend": "numba", "tiles_per_worker": 2},
                        measured={"round_trip_ms": 1.5}, comment="written by a test")
    (tmp_path / "eophis_hpc.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert config.load() == {"strategy": "datatype", "backend": "numba", "tiles_per_worker": 2}
    g = eh.Grid(nx=10, ny=8)
    ex = [eh.Exchange(inputs=["u"], outputs=["fu"])]
    t = eh.Tunnel(g, halo=1, exchanges=ex)
    assert (t.strategy, t.backend) == ("datatype", "numba")
    t = eh.Tunnel(g, halo=1, exchanges=ex, strategy="packed", backend="cython")
    assert (t.strategy, t.backend) == ("packed", "cython")
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "missing.toml"))
    with pytest.raises(config.ConfigError, match="missing.toml: no such file"):
        config.load()


@pytest.mark.parametrize("text,match", [
    ("[tunnel]\nstrategy = 'fast'\n", r":2: strategy = 'fast' is not one of"),
    ("[tunnel]\n\nwarp = 3\n", r":3: unknown key 'warp'"),
    ("[tunnel]\ntiles_per_worker = 0\n", r":2: tiles_per_worker must be a positive integer"),
    ("[tunnel]\nstrategy = \n", r"line 2"),
    ("[tuned]\n", r"unknown table \[tuned\]"),
])
def test_bad_settings_name_line_and_key(text, match):
    with pytest.raises(config.ConfigError, match=match):
        config.parse(text, "eophis_hpc.toml")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_parses_or_raises_config_error(text):
    """Whatever the file holds: a valid settings dict or a ConfigError, never anything else."""
    try:
        out = config.parse(text)
    except config.ConfigError:
        return
    assert set(out) <= set(config.TUNNEL_KEYS)
