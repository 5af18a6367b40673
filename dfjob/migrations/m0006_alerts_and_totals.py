"""Version 6: alerts that reach people, housekeeping state, and run totals that never go down.

- `alert_outbox`: one row per alert event (`job.failed`, `flow.late`, `queue.stalled`), written in
  the transaction of the state change that caused it; `alert_deliveries`: one row per event and
  destination (`[[alerts]]` entry, named by a digest of its URL, never the URL itself: a webhook
  URL is a secret), with attempts, the next try, and when it was sent or given up.
- `flows.late_alerted_at`, `queue_states.stalled_alerted_at`: an alert raised once, cleared when
  the flow succeeds or the queue is served again.
- `dfjob_state`: small named facts (`last_prune_at`, `last_heartbeat_at`).
- `pruned_run_totals`: runs counted per flow and status as `prune` deletes them, so that
  `dfjob_runs_total` adds the history still kept to what was pruned and never goes down.
"""

from __future__ import annotations

from dfjob.sql import execute

NAME = "alert outbox and deliveries, late and stalled marks, state, pruned run totals"


def _statements(time: str, big_int: str, id_column: str, flows: str, outbox: str) -> list[str]:
    return [
        f'CREATE TABLE dfjob.alert_outbox ({id_column}, "event" VARCHAR(32) NOT NULL, "payload" TEXT NOT NULL,'
        f' "created_at" {time} NOT NULL)',
        f'CREATE TABLE dfjob.alert_deliveries ("outbox_id" {big_int} NOT NULL, "destination" VARCHAR(32) NOT NULL,'
        f' "attempts" INTEGER NOT NULL, "next_attempt_at" {time} NOT NULL, "sent_at" {time},'
        f' "gave_up_at" {time}, "last_error" TEXT, PRIMARY KEY ("outbox_id", "destination"),'
        f' FOREIGN KEY ("outbox_id") REFERENCES {outbox} ("id") ON DELETE CASCADE)',
        f"ALTER TABLE dfjob.data_flows ADD COLUMN late_alerted_at {time}",
        f"ALTER TABLE dfjob.queue_states ADD COLUMN stalled_alerted_at {time}",
        f'CREATE TABLE dfjob.dfjob_state ("name" VARCHAR(64) NOT NULL PRIMARY KEY, "value" TEXT,'
        f' "changed_at" {time} NOT NULL)',
        f'CREATE TABLE dfjob.pruned_run_totals ("data_flow_id" {big_int} NOT NULL, "status" VARCHAR(16) NOT NULL,'
        f' "runs" {big_int} NOT NULL, PRIMARY KEY ("data_flow_id", "status"),'
        f' FOREIGN KEY ("data_flow_id") REFERENCES {flows} ("id") ON DELETE CASCADE)',
        *INDEXES,
    ]


INDEXES = [
    "CREATE INDEX alert_outbox_created ON dfjob.alert_outbox (created_at)",
    "CREATE INDEX alert_deliveries_due ON dfjob.alert_deliveries (next_attempt_at)"
    " WHERE sent_at IS NULL AND gave_up_at IS NULL",
]


def sqlite() -> None:
    id_column = '"id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT'
    for statement in _statements("DATETIME", "INTEGER", id_column, '"data_flows"', '"alert_outbox"'):
        execute(statement)


def postgres(schema: str) -> None:
    id_column = '"id" BIGSERIAL NOT NULL PRIMARY KEY'
    flows, outbox = f'"{schema}"."data_flows"', f'"{schema}"."alert_outbox"'
    for statement in _statements("TIMESTAMP", "BIGINT", id_column, flows, outbox):
        execute(statement)
