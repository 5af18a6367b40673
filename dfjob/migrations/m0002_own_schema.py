"""Version 2: on Postgres, dfjob's tables leave `public` for a schema of their own
(`database.schema`), so they never meet an application's tables; both databases record when
and which step was applied."""

from __future__ import annotations

from dfjob.sql import execute

NAME = "tables in a schema of their own; a record of each step"
V1_TABLES = ("data_flows", "jobs", "data_flow_runs", "dfjob_schema")


def sqlite() -> None:
    execute("ALTER TABLE dfjob_schema ADD COLUMN name TEXT")
    execute("ALTER TABLE dfjob_schema ADD COLUMN applied_at DATETIME")


def postgres(schema: str) -> None:
    execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    if schema != "public":
        # Indexes, constraints and the id sequences (owned by their columns) move with each table.
        for table in V1_TABLES:
            execute(f'ALTER TABLE public.{table} SET SCHEMA "{schema}"')
    execute(f'ALTER TABLE "{schema}".dfjob_schema ADD COLUMN name TEXT, ADD COLUMN applied_at TIMESTAMP')
