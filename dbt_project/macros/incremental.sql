{#- What a run reads and writes follows the new data, not the history (issue 27). Each pipeline
    run builds the incremental marts for the sessions, conversations, days and hours its new
    data touches; these macros find them, and read each source for those sessions only, with
    the filter applied before any per-session window (a filter on a windowed view is applied
    after the window, which then runs over the whole history). -#}

{# The time this dbt invocation started, as a SQL literal: every row an incremental mart writes
   carries it as `built_at`, which is how a run's tests find the rows the run wrote. #}
{% macro run_started_literal() -%}
    '{{ run_started_at.isoformat() }}'::timestamptz
{%- endmacro %}

{# The newest value of `column` in this model's own table, as a SQL literal (read when the model
   compiles, so the filters built from it are constants DuckDB prunes row groups with). #}
{% macro watermark(column) -%}
    {%- if execute and is_incremental()
          and column in adapter.get_columns_in_relation(this) | map(attribute='name') | list -%}
        {%- set found = run_query("select coalesce(max(" ~ column ~ "), '-infinity'::timestamptz)::varchar from " ~ this) -%}
        '{{ found.columns[0].values()[0] }}'::timestamptz
    {%- else -%}
        '-infinity'::timestamptz
    {%- endif -%}
{%- endmacro %}

{# Sessions whose sources changed since this incremental model last ran: any load (webhook
   event, REST record, recording, enrichment) newer than the newest `source_loaded_at` it built,
   and every session of an agent whose record changed since (a rename). #}
{% macro touched_sessions() -%}
    {% if is_incremental() and 'built_at' in adapter.get_columns_in_relation(this) | map(attribute='name') | list %}
    {%- set since = watermark('source_loaded_at') %}
    select session_id from (
        select session_id from {{ ref('stg_webhook_events') }} where ingested_at > {{ since }}
        union
        select session_id from {{ source('raw', 'layercode_session_details') }}
        where http_status = 200 and fetched_at > {{ since }}
        union
        select session_id from {{ source('raw', 'layercode_recordings') }} where fetched_at > {{ since }}
        union
        select session_id from {{ source('enrichment', 'session_enrichments') }} where enriched_at > {{ since }}
        union
        select session_id from {{ ref('stg_webhook_events') }}
        where agent_id in (select agent_id from {{ source('raw', 'layercode_agents') }} where first_seen_at > {{ since }})
    ) touched_by_a_load
    -- a session whose text has expired keeps the rows it had: rebuilt from the emptied text, its
    -- turns, words and turn latencies (and the day's aggregates over them) would change
    where session_id not in (select session_id from {{ source('raw', 'retention_expired') }} where class = 'text')
    {% else %}  {#- the first build, or a table from before `built_at`: every session, in chunks #}
    select session_id from {{ ref('int_session_sources') }} where {{ first_build_chunk(0) }}
    {% endif %}
{%- endmacro %}

{#- A first build over a long history runs in chunks of sessions (about `first_build_chunk_sessions`
    each), so its memory stays bounded: one statement over a million sessions' turns and
    messages needed 10 GB. The model's own statement builds chunk 0; `build_remaining_chunks`
    (its post-hook) inserts the others with the same compiled SQL. -#}
{% macro first_build_chunks() -%}
    {%- if not execute or load_relation(ref('int_session_sources')) is none -%}{{ return(1) }}{%- endif -%}
    {%- set sessions = run_query("select count(*) from " ~ ref('int_session_sources')).columns[0].values()[0] -%}
    {{ return([1, ((sessions / var('first_build_chunk_sessions', 150000)) | round(0, 'ceil') | int)] | max) }}
{%- endmacro %}

{% macro first_build_chunk(k) -%}
    /*chunk*/ hash(session_id) % {{ first_build_chunks() }} = {{ k }}
{%- endmacro %}

{% macro build_remaining_chunks() -%}
    {%- set code = model.compiled_code or '' -%}
    {%- set marker = modules.re.search('/\*chunk\*/ hash\(session_id\) % (\d+) = 0', code) -%}
    {%- if execute and marker -%}
        {%- set chunks = marker.group(1) | int -%}
        {%- for k in range(1, chunks) %}
        {#- (a rebuild of an existing table, one from before `built_at`, replaces the chunk's rows) #}
        delete from {{ this }} where hash(session_id) % {{ chunks }} = {{ k }};
        insert into {{ this }} {{ code | replace(marker.group(0), '/*chunk*/ hash(session_id) % ' ~ chunks ~ ' = ' ~ k) }};
        {%- endfor %}
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{# The session ids `sql` returns, as a list of SQL literals when there are at most `limit` of
   them (none: `null`), else `fallback` (a query of them: by default `sql` itself). A literal list is a filter DuckDB applies in the table
   scan, before a view's projections (JSON extraction) and windows; a subquery is a join applied
   after them, which for a few sessions spread over the key range reads the whole history. #}
{% macro session_id_list(sql, fallback=none, limit=2000) -%}
    {%- set fallback = fallback or sql -%}
    {#- a first build's chunk stays a query: its post-hook rewrites the chunk in the SQL #}
    {%- if not execute or '/*chunk*/' in sql -%}{{ return(fallback) }}{%- endif -%}
    {%- set ids = run_query("select distinct session_id from (" ~ sql ~ ") where session_id is not null limit " ~ (limit + 1)).columns[0].values() -%}
    {%- if ids | length == 0 -%}{{ return("null") }}{%- endif -%}
    {%- if ids | length > limit -%}{{ return(fallback) }}{%- endif -%}
    {%- set quoted = [] -%}
    {%- for id in ids -%}{%- do quoted.append("'" ~ (id | replace("'", "''")) ~ "'") -%}{%- endfor -%}
    {#- and the oldest load of their webhook events, as a comment `sessions_in` reads (see there) -#}
    {%- set since = run_query("select min(ingested_at)::varchar from " ~ source('raw', 'layercode_events')
                              ~ " where session_id in (" ~ (quoted | join(', ')) ~ ")").columns[0].values()[0] -%}
    {%- set bound = (" /*events_since:" ~ since ~ "*/") if since else "" -%}
    {{ return(quoted | join(', ') ~ bound) }}
{%- endmacro %}

{#- `session_id in (<sessions>)` for a relation of webhook events (with `ingested_at`), plus, when
    `sessions` is a literal list, `ingested_at >=` the oldest load of those sessions' events: a
    constant DuckDB prunes the events table's row groups with (events are appended as they are
    loaded). A literal IN list alone prunes nothing (session ids are random): the scan then reads
    every event's JSON body to find a few sessions' (1.3 s against 23 ms over 5M events). -#}
{% macro sessions_in(sessions, alias=none) -%}
    {%- set prefix = (alias ~ '.') if alias else '' -%}
    {%- set marker = modules.re.search('/\*events_since:([^*]+)\*/', sessions or '') -%}
    {{ prefix }}session_id in ({{ sessions }})
    {%- if marker %} and {{ prefix }}ingested_at >= '{{ marker.group(1) }}'::timestamptz{% endif -%}
{%- endmacro %}

{# The sources of each session in `session_filter` (a query of session ids), as
   int_session_sources has them for every session. #}
{% macro session_sources(session_filter=none) -%}
    {%- set only = ("and session_id in (" ~ session_filter ~ ")") if session_filter else "" %}
with loads as (
    select session_id, agent_id, ingested_at as loaded_at from {{ ref('stg_webhook_events') }}
    where {{ sessions_in(session_filter) if session_filter else 'true' }}
    union all
    select session_id, agent_id, fetched_at from {{ source('raw', 'layercode_session_details') }}
    where http_status = 200 {{ only }}
    union all
    select session_id, agent_id, fetched_at from {{ source('raw', 'layercode_recordings') }} where true {{ only }}
    union all
    select session_id, agent_id, enriched_at from {{ source('enrichment', 'session_enrichments') }} where true {{ only }}
), sessions as (
    select session_id, min(agent_id) as agent_id, max(loaded_at) as loaded_at from loads group by session_id
), agent_changes as (  -- a renamed agent (a new version of its record) touches all of its sessions
    select agent_id, max(first_seen_at) as changed_at from {{ source('raw', 'layercode_agents') }} group by 1
)
select s.session_id, s.agent_id, greatest(s.loaded_at, coalesce(a.changed_at, s.loaded_at)) as source_loaded_at
from sessions s
left join agent_changes a using (agent_id)
{%- endmacro %}

{# The newest session.end of each session (of `session_filter`'s sessions only, when given). #}
{% macro session_ends(session_filter=none) -%}
select
    session_id,
    agent_id,
    coalesce(body->>'$.agent_id', agent_id) as reported_agent_id,
    body->>'$.conversation_id' as conversation_id,
    try_cast(body->>'$.started_at' as timestamptz) as started_at,
    try_cast(body->>'$.ended_at' as timestamptz) as ended_at,
    {{ measure("body->>'$.duration'", 604800000) }} as duration_ms,
    {{ measure("body->>'$.latency'", 600000) }} as latency_ms,
    {{ measure("body->>'$.transcription_duration_seconds'", 604800) }} as transcription_duration_seconds,
    {{ measure("body->>'$.tts_duration_seconds'", 604800) }} as tts_duration_seconds,
    body->>'$.ip_address' as ip_address,
    body->>'$.country_code' as country_code,
    body->>'$.from_phone_number' as from_phone_number,
    body->>'$.to_phone_number' as to_phone_number,
    body->>'$.recording_status' as recording_setting,
    body->'$.transcript' as transcript,
    metadata,
    received_at,
    ingested_at
from {{ ref('stg_webhook_events') }}
where event_type = 'session.end'
{%- if session_filter %} and {{ sessions_in(session_filter) }}{% endif %}
qualify row_number() over (partition by session_id order by received_at desc) = 1
{%- endmacro %}

{# The newest session.update of each session (of `session_filter`'s sessions only, when given). #}
{% macro session_updates(session_filter=none) -%}
select
    session_id,
    agent_id,
    body->>'$.recording_status' as recording_status,
    body->>'$.recording_url' as recording_url,
    {{ measure("body->>'$.recording_duration'", 604800) }} as recording_duration_s,
    body->>'$.error_message' as error_message,
    received_at,
    ingested_at
from {{ ref('stg_webhook_events') }}
where event_type = 'session.update'
{%- if session_filter %}
  and {{ sessions_in(session_filter) }}{% endif %}
qualify row_number() over (partition by session_id order by received_at desc) = 1
{%- endmacro %}

{# The newest REST record of each session (of `session_filter`'s sessions only, when given). #}
{% macro rest_sessions(session_filter=none) -%}
select
    session_id,
    agent_id,
    record->>'$.conversation_id' as conversation_id,
    try_cast(record->>'$.started_at' as timestamptz) as started_at,
    try_cast(record->>'$.ended_at' as timestamptz) as ended_at,
    {{ measure("record->>'$.duration_ms'", 604800000) }} as duration_ms,
    {{ measure("record->>'$.latency_ms'", 600000) }} as latency_ms,
    {{ measure("record->>'$.transcription_duration_seconds'", 604800) }} as transcription_duration_seconds,
    {{ measure("record->>'$.tts_duration_seconds'", 604800) }} as tts_duration_seconds,
    record->>'$.ip_address' as ip_address,
    record->>'$.country_code' as country_code,
    record->>'$.from_phone_number' as from_phone_number,
    record->>'$.from_phone_country' as from_phone_country,
    record->>'$.to_phone_number' as to_phone_number,
    record->>'$.to_phone_country' as to_phone_country,
    record->>'$.recording_status' as recording_status,
    record->>'$.recording_url' as recording_url,
    record->'$.transcript' as transcript,
    record->'$.metadata' as metadata,
    fetched_at
from {{ source('raw', 'layercode_session_details') }}
where http_status = 200
{%- if session_filter %} and session_id in ({{ session_filter }}){% endif %}
qualify row_number() over (partition by session_id order by fetched_at desc) = 1
{%- endmacro %}

{# Every enrichment version; is_latest marks the newest successful one per session (of
   `session_filter`'s sessions only, when given). #}
{% macro session_enrichments(session_filter=none) -%}
select
    *,
    error is null
      and row_number() over (partition by session_id, (error is null) order by enriched_at desc) = 1 as is_latest
from {{ source('enrichment', 'session_enrichments') }}
{%- if session_filter %} where session_id in ({{ session_filter }}){% endif %}
{%- endmacro %}


{#- Tests. A pipeline run (var test_scope = 'new') tests the rows it wrote or read anew; the
    scheduled test run (test_scope = 'all', also the default for a dbt run by hand) tests
    every row. A model says which rows are new in its `meta.new_rows`, a condition where
    `{since}` is the newest source load the marts had before this invocation (recorded by
    `record_test_scope`, on-run-start) and `{run}` this invocation's start (`built_at` of the
    rows an incremental mart wrote). -#}

{% macro new_rows_condition(relation) -%}
    {%- if var('test_scope', 'all') != 'new' or not execute -%}{{ return('') }}{%- endif -%}
    {%- set ns = namespace(condition='') -%}
    {%- for node in graph.nodes.values() -%}
        {%- if node.resource_type == 'model' and (node.alias or node.name) == relation.identifier
              and node.schema == relation.schema -%}
            {%- set ns.condition = node.config.meta.get('new_rows', '') -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if not ns.condition -%}{{ return('') }}{%- endif -%}
    {#- what record_test_scope found once for the whole invocation: one read of a one-row table
        per test, where finding the new sessions again would scan four sources per test -#}
    {%- set scope = run_query("select new_since::varchar, new_sessions from main._dbt_test_scope").rows[0] -%}
    {{ return(ns.condition | replace('{since}', "'" ~ scope[0] ~ "'::timestamptz")
                           | replace('{run}', run_started_literal())
                           | replace('{new_sessions}', scope[1])) }}
{%- endmacro %}

{# dbt's own (dbt/include/global_project/.../where_subquery.sql), plus the run's new-rows
   condition. #}
{% macro get_where_subquery(relation) -%}
    {%- set conditions = [] -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}{%- do conditions.append('(' ~ where ~ ')') -%}{%- endif -%}
    {%- set new_rows = new_rows_condition(relation) -%}
    {%- if new_rows -%}{%- do conditions.append('(' ~ new_rows ~ ')') -%}{%- endif -%}
    {%- if conditions -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ conditions | join(' and ') }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}

{# A singular test's relation under the same rule (`from {{ under_test(ref('fct_sessions')) }}`). #}
{% macro under_test(relation) -%}
    {%- set new_rows = new_rows_condition(relation) -%}
    {%- if new_rows -%}(select * from {{ relation }} where {{ new_rows }}){%- else -%}{{ relation }}{%- endif -%}
{%- endmacro %}

{# on-run-start: what a pipeline run's tests call new, found once: `new_since`, the newest source
   load the marts were built from before this invocation (a literal in the tests, so DuckDB
   prunes row groups with it), and `new_sessions`, the sessions with a load since (as literals
   when short: a filter DuckDB pushes below a per-session window; a subquery is applied above
   it, after the window ran over every session). #}
{% macro record_test_scope() -%}
    {%- if execute and var('test_scope', 'all') == 'new' -%}
        {%- set sessions = adapter.get_relation(database=target.database, schema='marts', identifier='fct_sessions') -%}
        {%- set since = run_query("select coalesce(" ~ (("(select max(source_loaded_at) from " ~ sessions ~ ")") if sessions else "null")
                                  ~ ", '-infinity'::timestamptz)::varchar").columns[0].values()[0] -%}
        {%- set since = "'" ~ since ~ "'::timestamptz" -%}
        {%- set new_sessions -%}
            select session_id from {{ source('raw', 'layercode_events') }} where ingested_at > {{ since }} and session_id is not null
            union select session_id from {{ source('raw', 'layercode_session_details') }} where fetched_at > {{ since }}
            union select session_id from {{ source('raw', 'layercode_recordings') }} where fetched_at > {{ since }}
            union select session_id from {{ source('enrichment', 'session_enrichments') }} where enriched_at > {{ since }}
        {%- endset -%}
        create or replace table main._dbt_test_scope as
        select {{ since }} as new_since, '{{ session_id_list(new_sessions) | replace("'", "''") }}' as new_sessions
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}
