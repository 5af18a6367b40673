"""peewee without psycopg until Postgres is used: commands on SQLite never import the driver, and
peewee given it later is, name by name, the peewee of a plain import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Every module-level name of peewee and every attribute of its psycopg 3 adapter, as text.
SNAPSHOT = """
import json, re, sys
import peewee
def shown(value):
    return re.sub(r" at 0x[0-9a-f]+", "", f"{type(value).__module__}.{type(value).__qualname__}:{value!r}")
names = {name: shown(value) for name, value in vars(peewee).items() if not name.startswith("__")}
adapter = peewee.Psycopg3Adapter
adapter = {name: shown(getattr(adapter, name)) for name in dir(adapter) if not name.startswith("__")}
print(json.dumps({"module": names, "adapter": adapter}))
"""


DEFER = "from dfjob.drivers import defer_psycopg, load_psycopg\ndefer_psycopg()\nimport peewee\n"


def _run(code: str, **env_vars: str) -> str:
    # One hash seed, so that sets print in the same order in both processes.
    env = {**os.environ, "PYTHONHASHSEED": "0", **env_vars}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_command_on_sqlite_never_imports_psycopg(tmp_path: Path) -> None:
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('psycopg imported:', 'psycopg' in sys.modules))\n"
        "sys.argv = ['dfjob', 'db', 'init']\n"
        "from dfjob.entry import main\n"
        "main()\n"
    )
    shown = _run(code, DFJOB_DATABASE_URL=f"sqlite:///{tmp_path}/dfjob.db")
    assert shown.splitlines()[-1] == "psycopg imported: False"


def test_peewee_given_psycopg_later_matches_a_plain_import() -> None:
    plain = json.loads(_run(SNAPSHOT))
    deferred = json.loads(_run(DEFER + "load_psycopg()\n" + SNAPSHOT))
    assert deferred["module"]["psycopg"] != "builtins.NoneType:None"
    assert deferred["adapter"]["txn_idle"] != "builtins.NoneType:None"
    assert deferred == plain


def test_a_postgres_database_gives_peewee_the_driver() -> None:
    code = DEFER + (
        "before = peewee.psycopg\n"
        "from dfjob import db\n"
        "db.make_database('postgresql://u@127.0.0.1:1/db', '.')\n"
        "print(before is None, peewee.psycopg is not None, peewee.Psycopg3Adapter.txn_unknown is not None)\n"
    )
    assert _run(code).split() == ["True", "True", "True"]


def test_an_application_importing_dfjob_keeps_peewee_whole() -> None:
    # An application's own peewee Postgres database needs the driver, whatever dfjob uses.
    code = "import dfjob\ndfjob.Client\nfrom dfjob import db\nimport peewee\nprint(peewee.psycopg is not None)\n"
    assert _run(code).strip() == "True"


def test_monitoring_callbacks_get_a_whole_peewee(tmp_path: Path) -> None:
    # The worker loads its callbacks in the command's process; one may use peewee on Postgres.
    (tmp_path / "hooks.py").write_text("import peewee\nHAS_DRIVER = peewee.psycopg is not None\n\ndef hook(*a): pass\n")
    code = DEFER + (
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from dfjob import events\n"
        "from dfjob.config import MonitoringSettings, Settings\n"
        "events.load_callbacks(Settings(monitoring=MonitoringSettings(callbacks=('hooks:hook',))))\n"
        "print(sys.modules['hooks'].HAS_DRIVER)\n"
    )
    assert _run("import sys\n" + code).strip() == "True"
