"""The `dfjob` command: parse, call one function, print text or JSON. No SQL, no business rules.

Every refused request ends as one `Error: …` line on stderr and exit status 1; exit 2 is left to
click's own parse errors; tracebacks appear only with `--debug`. The modules beside this one each
add a group of commands to `cli` when imported.
"""

from dfjob.cli import (  # noqa: F401
    daemon_commands,
    db_commands,
    flow_commands,
    job_commands,
    overview_commands,
    serve_commands,
)
from dfjob.cli.app import cli, main

__all__ = ["cli", "main"]
