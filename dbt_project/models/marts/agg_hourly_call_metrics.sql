{{ config(materialized='incremental', unique_key=['call_hour', 'agent_id'], incremental_strategy='delete+insert',
          on_schema_change='append_new_columns') }}
-- Per hour (UTC, by session start) and agent: the daily metrics at an hourly grain, for
-- capacity planning (peak hours, latency under load).
{{ call_metrics("date_trunc('hour', session_date_at at time zone 'UTC')", "call_hour") }}
