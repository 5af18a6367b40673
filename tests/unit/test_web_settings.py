"""`dfjob serve` before it listens: the [serve] settings and their refusals, the token file, the
web extra missing, and the access rules (networks, IPv4-mapped IPv6, tokens) on their own."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from dfjob.config import ServeSettings, Settings, load_settings
from dfjob.errors import DfjobError
from dfjob.web.auth import Access, load_tokens
from tests.unit.conftest import run_main


def _config(tmp_path: Path, serve: str) -> Path:
    path = tmp_path / "dfjob.toml"
    path.write_text(f'[database]\nurl = "sqlite:///dfjob.db"\n[serve]\n{serve}\n', encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("serve", "message"),
    [
        ("port = 0", "serve.port must be between 1 and 65535, not 0"),
        ("port = 70000", "serve.port must be between 1 and 65535"),
        ('port = "80"', "serve.port must be a whole number"),
        ('host = ""', "serve.host must be a host name or an IP address"),
        ('allow_cidrs = ["10.0.0.0/33"]', "serve.allow_cidrs: '10.0.0.0/33' is not a network"),
        ('allow_cidrs = ["everyone"]', "serve.allow_cidrs: 'everyone' is not a network"),
        ('tokens = ["has space"]', "a token must be printable ASCII characters without spaces"),
        ('tokens = [""]', "a token must be printable ASCII characters without spaces"),
        ("public_read = 1", "serve.public_read must be true or false"),
        ('colour = "red"', "unknown key serve.colour"),
    ],
)
def test_bad_serve_settings_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], serve: str, message: str
) -> None:
    config = _config(tmp_path, serve)
    code, out, err = run_main(capsys, "--config", str(config), "serve")
    assert code == 1
    assert out == ""
    assert err.startswith("Error: ")
    assert message in err
    assert len(err.splitlines()) == 1


def test_a_bad_port_option_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, "")
    code, _, err = run_main(capsys, "--config", str(config), "serve", "--port", "0")
    assert code == 1
    assert err == "Error: --port must be between 1 and 65535, not 0\n"


def test_a_missing_web_extra_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def without_flask(name: str, *args: Any) -> Any:
        return None if name == "flask" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_flask)
    code, out, err = run_main(capsys, "--config", str(_config(tmp_path, "")), "serve")
    assert (code, out) == (1, "")
    assert err == "Error: dfjob serve needs the web extra: pip install 'dfjob[web]'\n"


def test_tokens_come_from_the_list_and_the_token_file(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("# ops team\nfirst-token-abc\n\n  second-token-def  \n", encoding="utf-8")
    config = _config(tmp_path, 'tokens = ["listed-token-xyz"]\ntoken_file = "tokens"')
    assert load_tokens(load_settings(str(config))) == ("listed-token-xyz", "first-token-abc", "second-token-def")


def test_an_unreadable_token_file_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, 'token_file = "missing"')
    with pytest.raises(DfjobError, match=r"serve\.token_file: cannot read"):
        load_tokens(load_settings(str(config)))


def test_a_token_file_line_with_a_space_is_refused_without_showing_it(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("secret part\n", encoding="utf-8")
    with pytest.raises(DfjobError) as raised:
        load_tokens(load_settings(str(_config(tmp_path, 'token_file = "tokens"'))))
    assert "secret" not in str(raised.value).replace("serve.token_file", "")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.200.1.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("fd00::5", True),
        ("192.168.1.1", False),
        ("::ffff:192.168.1.1", False),
        ("fe80::1", False),
        ("2001:db8::1", False),
        ("", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_networks_are_checked_for_ipv4_ipv6_and_ipv4_mapped_addresses(address: str | None, allowed: bool) -> None:
    access = Access.from_settings(
        ServeSettings(allow_cidrs=("127.0.0.0/8", "::1/128", "10.0.0.0/8", "fd00::/8")), ["token-one-abcdef"]
    )
    assert access.client_allowed(address) is allowed


def test_every_configured_token_is_accepted_and_nothing_else() -> None:
    access = Access.from_settings(Settings().serve, ["token-one-abcdef", "token-two-ghijkl"])
    assert access.token_valid("token-one-abcdef")
    assert access.token_valid("token-two-ghijkl")
    for wrong in ("token-one-abcde", "token-one-abcdefg", "", "TOKEN-ONE-ABCDEF", None, "tökén"):
        assert not access.token_valid(wrong)
    assert not Access.from_settings(Settings().serve, []).token_valid("")
