"""Alerts that reach people: raised into an outbox, delivered by the scheduler and the heartbeat.

Raising. An alert event is a row in `alert_outbox`, written in the transaction of the state change
that caused it: a job failing for good (the worker's finish, or a rescue), a flow found late, a
queue found stalled (both by the heartbeat, here). `flow.late` and `queue.stalled` are raised once
and marked (`late_alerted_at`, `stalled_alerted_at`); the mark clears when the flow succeeds or the
queue is served again, so the next time it goes wrong raises it again.

Delivering. Each `[[alerts]]` destination that listens for an event gets a delivery row for it
(`alert_deliveries`, keyed by a digest of its URL: the URL itself may be a secret). A sender claims
due deliveries by moving their next attempt past its own timeout (so two schedulers never send the
same one at once, and one that dies mid-send is retried later), posts them with a short timeout,
then records the result: sent, or retried with backoff from 10 s to at most 10 minutes apart, for a
day. At least once: a sender that dies between sending and recording sends again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from dfjob import clock, events, overview
from dfjob.config import AlertSettings, Settings
from dfjob.db import describe_error, is_postgres, write_transaction
from dfjob.models import from_db_time, to_db_time
from dfjob.schedule import format_duration
from dfjob.sql import execute, marks
from dfjob.store import add_alert

JOB_FAILED, FLOW_LATE, QUEUE_STALLED = "job.failed", "flow.late", "queue.stalled"
SEND_TIMEOUT_SECONDS = 5.0
# A claimed delivery is someone's for this long; after it, anyone may retry it.
CLAIM_SECONDS = 60.0
FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS = 10.0, 600.0
KEEP_TRYING = timedelta(days=1)
# A queue with ready jobs and no live worker for this long is stalled.
STALLED_AFTER_SECONDS = 300.0
# One pass sends at most this many, so a heartbeat is never held up for long by slow receivers.
PER_PASS = 50


def destination_id(alert: AlertSettings) -> str:
    return hashlib.sha256(alert.url.encode()).hexdigest()[:32]


def url_host(url: str) -> str:
    """What events say about a destination: its host, never its path (a webhook's path is a secret)."""
    return urlsplit(url).hostname or "?"


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 10 s, 20 s, … at most 10 min."""
    return float(min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(0, attempts - 1)))


# -- raising ----------------------------------------------------------------------------------------


def raise_late_flows(now: datetime) -> int:
    """`flow.late` for each enabled flow with `late_after` whose last success (or creation, when it
    never succeeded) is older than that, once until it succeeds again. Returns how many."""
    rows = execute(
        "SELECT id, name, late_after_seconds, last_success_at, created_at FROM dfjob.data_flows"
        " WHERE enabled AND late_after_seconds IS NOT NULL AND late_alerted_at IS NULL",
    ).fetchall()
    raised = 0
    for flow_id, name, late_after, last_success, created in rows:
        since = from_db_time(last_success) or from_db_time(created)
        if since is None or now - since < timedelta(seconds=late_after):
            continue
        with write_transaction():
            marked = execute(
                "UPDATE dfjob.data_flows SET late_alerted_at = ? WHERE id = ? AND late_alerted_at IS NULL",
                (to_db_time(now), flow_id),
            ).rowcount
            if marked:
                payload = {
                    "data_flow_id": flow_id,
                    "data_flow_name": name,
                    "late_after": format_duration(late_after),
                    "last_success_at": clock.iso(from_db_time(last_success)),
                }
                add_alert(FLOW_LATE, payload, now)
                raised += 1
    return raised


def raise_stalled_queues(now: datetime) -> int:
    """`queue.stalled` for each queue whose oldest ready job has waited `STALLED_AFTER_SECONDS` with
    no live worker serving it (a paused queue waits on purpose), once until it is served or empty
    again. Returns how many."""
    raised = 0
    alerted = {row[0] for row in execute("SELECT name FROM dfjob.queue_states WHERE stalled_alerted_at IS NOT NULL")}
    for queue in overview.list_queues(now):
        name = queue["queue"]
        stalled = (
            queue["ready"] > 0
            and not queue["workers"]
            and not queue["paused"]
            and (queue["oldest_ready_seconds"] or 0) >= STALLED_AFTER_SECONDS
        )
        if stalled and name not in alerted:
            with write_transaction():
                marked = execute(
                    "INSERT INTO dfjob.queue_states (name, paused, changed_at, stalled_alerted_at)"
                    " VALUES (?, FALSE, ?, ?) ON CONFLICT (name) DO UPDATE SET stalled_alerted_at ="
                    " excluded.stalled_alerted_at WHERE queue_states.stalled_alerted_at IS NULL",
                    (name, to_db_time(now), to_db_time(now)),
                ).rowcount
                if marked:
                    payload = {
                        "queue": name,
                        "ready": queue["ready"],
                        "oldest_ready_seconds": queue["oldest_ready_seconds"],
                    }
                    add_alert(QUEUE_STALLED, payload, now)
                    raised += 1
        elif not stalled and name in alerted and (queue["workers"] or not queue["ready"]):
            execute("UPDATE dfjob.queue_states SET stalled_alerted_at = NULL WHERE name = ?", (name,))
    return raised


# -- delivering -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    outbox_id: int
    destination: str
    attempts: int
    event: str
    payload: dict[str, Any]
    created_at: datetime


def _fan_out(settings: Settings, now: datetime) -> None:
    """A delivery row for every recent event a destination listens for and has not got one of."""
    since = to_db_time(now - KEEP_TRYING)
    with write_transaction():
        for alert in settings.alerts:
            execute(
                "INSERT INTO dfjob.alert_deliveries (outbox_id, destination, attempts, next_attempt_at)"
                f" SELECT o.id, ?, 0, o.created_at FROM dfjob.alert_outbox o WHERE o.created_at >= ?"
                f" AND o.event IN ({marks(len(alert.on))}) AND NOT EXISTS (SELECT 1 FROM dfjob.alert_deliveries d"
                "  WHERE d.outbox_id = o.id AND d.destination = ?) ON CONFLICT DO NOTHING",
                (destination_id(alert), since, *alert.on, destination_id(alert)),
            )


def _claim(destinations: list[str], now: datetime, limit: int) -> list[Delivery]:
    """Due deliveries to these destinations, made ours for `CLAIM_SECONDS`."""
    lock = " FOR UPDATE OF d SKIP LOCKED" if is_postgres() else ""
    with write_transaction():
        rows = execute(
            "SELECT d.outbox_id, d.destination, d.attempts, o.event, o.payload, o.created_at"
            " FROM dfjob.alert_deliveries d JOIN dfjob.alert_outbox o ON o.id = d.outbox_id"
            f" WHERE d.sent_at IS NULL AND d.gave_up_at IS NULL AND d.next_attempt_at <= ?"
            f" AND d.destination IN ({marks(len(destinations))}) ORDER BY d.next_attempt_at LIMIT ?{lock}",
            (to_db_time(now), *destinations, limit),
        ).fetchall()
        until = to_db_time(now + timedelta(seconds=CLAIM_SECONDS))
        for outbox_id, destination, *_ in rows:
            execute(
                "UPDATE dfjob.alert_deliveries SET next_attempt_at = ? WHERE outbox_id = ? AND destination = ?",
                (until, outbox_id, destination),
            )
    return [Delivery(row[0], row[1], row[2], row[3], json.loads(row[4]), from_db_time(row[5]) or now) for row in rows]


def describe(event: str, payload: dict[str, Any]) -> str:
    """One line for people (Slack's `text`, the JSON body's `text`)."""
    if event == JOB_FAILED:
        return (
            f"dfjob: job {payload.get('job_id')} of {payload.get('data_flow_name')} failed for good"
            f" (attempt {payload.get('attempt')}, queue {payload.get('queue')}): {payload.get('error')}"
        )
    if event == FLOW_LATE:
        since = payload.get("last_success_at") or "never"
        return (
            f"dfjob: data flow {payload.get('data_flow_name')} has had no successful run for"
            f" {payload.get('late_after')} (last success: {since})"
        )
    return (
        f"dfjob: queue {payload.get('queue')} has {payload.get('ready')} ready jobs and no live worker"
        f" (oldest waiting {payload.get('oldest_ready_seconds')} s)"
    )


def body(alert: AlertSettings, event: str, payload: dict[str, Any]) -> bytes:
    text = describe(event, payload)
    document: dict[str, Any] = {"text": text} if alert.format == "slack" else {"alert": event, "text": text, **payload}
    return json.dumps(document, ensure_ascii=False).encode()


def sign(secret: str, content: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def _send(client: httpx.Client, alert: AlertSettings, delivery: Delivery) -> tuple[bool, int | None, str | None]:
    """POST one alert: (delivered, HTTP status, error)."""
    content = body(alert, delivery.event, delivery.payload)
    headers = {"Content-Type": "application/json", "User-Agent": "dfjob-alerts"}
    if alert.secret:
        headers["X-Dfjob-Signature"] = sign(alert.secret, content)
    try:
        response = client.post(alert.url, content=content, headers=headers)
    except httpx.HTTPError as exc:
        return False, None, f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return True, response.status_code, None
    return False, response.status_code, f"HTTP {response.status_code}"


def _record(delivery: Delivery, sent: bool, error: str | None, now: datetime) -> bool:
    """Write how an attempt went; True when the delivery will be tried again."""
    attempts = delivery.attempts + 1
    key = (delivery.outbox_id, delivery.destination)
    if sent:
        execute(
            "UPDATE dfjob.alert_deliveries SET sent_at = ?, attempts = ?, last_error = NULL"
            " WHERE outbox_id = ? AND destination = ?",
            (to_db_time(now), attempts, *key),
        )
        return False
    retry_at = now + timedelta(seconds=retry_delay(attempts))
    if retry_at - delivery.created_at > KEEP_TRYING:
        execute(
            "UPDATE dfjob.alert_deliveries SET gave_up_at = ?, attempts = ?, last_error = ?"
            " WHERE outbox_id = ? AND destination = ?",
            (to_db_time(now), attempts, error, *key),
        )
        return False
    execute(
        "UPDATE dfjob.alert_deliveries SET next_attempt_at = ?, attempts = ?, last_error = ?"
        " WHERE outbox_id = ? AND destination = ?",
        (to_db_time(retry_at), attempts, error, *key),
    )
    return True


def deliver(settings: Settings, now: datetime | None = None, limit: int = PER_PASS) -> int:
    """Send the alerts that are due to every configured destination; returns how many were sent."""
    if not settings.alerts:
        return 0
    now = now or clock.now()
    _fan_out(settings, now)
    by_id = {destination_id(alert): alert for alert in settings.alerts}
    due = _claim(list(by_id), now, limit)
    sent_count = 0
    with httpx.Client(timeout=SEND_TIMEOUT_SECONDS, follow_redirects=False) as client:
        for delivery in due:
            alert = by_id[delivery.destination]
            began = time.monotonic()
            sent, status, error = _send(client, alert, delivery)
            fields: dict[str, Any] = {"alert": delivery.event, "url_host": url_host(alert.url), "status": status}
            will_retry = _record(delivery, sent, error, clock.now())
            if sent:
                sent_count += 1
                events.emit(events.ALERT_SENT, **fields, ms=round((time.monotonic() - began) * 1000))
            else:
                events.emit(events.ALERT_FAILED, **fields, error=error, attempts=delivery.attempts + 1,
                            will_retry=will_retry)  # fmt: skip
    return sent_count


def next_delivery_at(settings: Settings) -> datetime | None:
    """When the next delivery to a configured destination is due (the scheduler wakes for it)."""
    if not settings.alerts:
        return None
    destinations = [destination_id(alert) for alert in settings.alerts]
    row = execute(
        "SELECT MIN(next_attempt_at) FROM dfjob.alert_deliveries WHERE sent_at IS NULL AND gave_up_at IS NULL"
        f" AND destination IN ({marks(len(destinations))})",
        destinations,
    ).fetchone()
    return from_db_time(row[0]) if row else None


def run_pass(settings: Settings, now: datetime) -> None:
    """What a heartbeat pass does for alerts: raise the late and stalled ones, deliver what is due.
    A failure is logged and left for the next pass."""
    try:
        raise_late_flows(now)
        raise_stalled_queues(now)
        deliver(settings, now)
    except Exception as exc:  # noqa: BLE001 (alerts never fail a heartbeat)
        events.log.warning("alerts.failed", error=describe_error(exc))
