{{ config(severity='warn', meta={'dagster': {'ref': {'name': 'fct_sessions'}}}) }}
-- Sessions whose platform timestamps say they ended before they started (kept as they came).
select session_id, started_at, ended_at from {{ under_test(ref('fct_sessions')) }} where ended_at < started_at
