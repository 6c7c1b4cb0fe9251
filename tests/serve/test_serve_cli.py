"""``histoscan serve``: the command exists, picks its engine, and warns before exposing itself."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import histoscan.cli.serve_cmd  # noqa: F401  (registers the command)
from histoscan.cli import app
from histoscan.cli.serve_cmd import is_loopback


def test_help_lists_the_options():
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in (
        "--model",
        "--host",
        "--port",
        "--token",
        "--engine",
        "--max-upload-mb",
        "--resize",
    ):
        assert option in result.output
    assert "127.0.0.1" in result.output


def test_bad_tta_is_one_line_and_exit_2():
    result = CliRunner().invoke(app, ["serve", "--tta", "sideways"])
    assert result.exit_code == 2
    assert "unknown TTA mode" in result.output


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.fixture
def fake_uvicorn(monkeypatch):
    """Record what uvicorn.run would serve instead of serving it."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


def test_binds_loopback_by_default(fake_uvicorn):
    result = CliRunner().invoke(app, ["serve", "--port", "8123"])
    assert result.exit_code == 0, result.output
    ((served, kwargs),) = fake_uvicorn
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8123
    assert "warning" not in result.output
    assert served.state.service.settings.token is None


def test_warns_when_exposed_without_token(fake_uvicorn):
    exposed = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    guarded = CliRunner().invoke(
        app, ["serve", "--host", "0.0.0.0"], env={"HISTOSCAN_TOKEN": "s3cret"}
    )
    assert "without a token" in exposed.output
    assert "without a token" not in guarded.output
    assert fake_uvicorn[1][0].state.service.settings.token == "s3cret"
