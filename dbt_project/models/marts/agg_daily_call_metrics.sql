{{ config(materialized='incremental', unique_key=['call_date', 'agent_id'], incremental_strategy='delete+insert',
          on_schema_change='append_new_columns') }}
-- Per day (UTC, by session start) and agent: volumes, durations, turn latency, barge-ins,
-- speech, recording coverage, outcomes and cost. Definitions: macros/call_metrics.sql and the
-- metric glossary (models/marts/metrics.md).
{{ call_metrics("cast(session_date_at at time zone 'UTC' as date)", "call_date") }}
