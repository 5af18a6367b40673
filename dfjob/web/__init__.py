"""`dfjob serve`: the dashboard, the JSON API, the heartbeat endpoint, `/metrics` and `/healthz`.

Flask with Jinja2 templates (autoescaping on for every template, so names, errors, logs and
params are always text), served by waitress. Why these: dfjob reads and writes through peewee,
which is synchronous, so a WSGI app on a thread pool fits it without an async layer; waitress is
pure Python (no C build on any host), production-grade, and reports the socket peer as
`REMOTE_ADDR`, which is what the network allow-list checks. Every asset (CSS, the small script
that follows a running log) ships in this package: no CDN, no build step.

The handlers are a thin layer over the functions the command line calls (`history`, `overview`,
`runlogs`, `registry`, `trigger`, `heartbeat`); they hold no SQL.

- `app`: the app factory, error pages and JSON errors, the schema check;
- `auth`: networks, bearer tokens, the dashboard's session and CSRF tokens;
- `api`: `/healthz`, `/heartbeat`, `/api/*`; `metrics`: `/metrics`;
- `pages`: the dashboard; `charts`: its SVG charts, drawn on the server;
- `server`: waitress, started and stopped as a daemon.
"""
