from __future__ import annotations

import pytest

from dfjob import db, passwords


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:s3cr@t@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3cret@h:notaport/db", "postgresql://u:***@h:notaport/db"),
        ("postgresql://:s3cret@h/db", "postgresql://:***@h/db"),
        ("postgresql://h/db?sslmode=require&password=s3cret&x=1", "postgresql://h/db?sslmode=require&password=***&x=1"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///dfjob.db", "sqlite:///dfjob.db"),
    ],
)
def test_redact_url_hides_the_password_wherever_it_stands(url: str, shown: str) -> None:
    assert db.redact_url(url) == shown
    assert "s3c" not in db.redact_url(url)


def test_scrub_removes_the_password_of_the_database_last_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "_password", None)
    db.make_database("postgresql://u:s3cret@127.0.0.1:1/db", ".")
    assert db.scrub('auth failed for "u" with s3cret') == 'auth failed for "u" with ***'
    db.make_database("postgresql://u@127.0.0.1:1/db?password=hunter2", ".")
    assert "hunter2" not in db.scrub("connection string had password=hunter2")


def test_relative_sqlite_paths_resolve_against_the_base_folder() -> None:
    assert db.sqlite_path("sqlite:///data/dfjob.db", "/srv/app") == "/srv/app/data/dfjob.db"
    assert db.sqlite_path("sqlite:////var/lib/dfjob.db", "/srv/app") == "/var/lib/dfjob.db"
