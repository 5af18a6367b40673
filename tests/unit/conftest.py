"""Unit-tier fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from dfjob.cli import main
from dfjob.db import close_database


@pytest.fixture
def isolated_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No config from the environment, the working directory in tmp_path, sys.path restored after."""
    monkeypatch.delenv("DFJOB_CONFIG", raising=False)
    monkeypatch.delenv("DFJOB_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    structlog.reset_defaults()  # it holds this test's captured stderr, which is about to close
    close_database()


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`dfjob ARGS` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(args))
    except SystemExit as exc:
        code = 0 if exc.code is None else int(exc.code)
    else:  # pragma: no cover (main always exits)
        code = 0
    out, err = capsys.readouterr()
    return code, out, err
