{# A transcript timestamp as a timestamptz: webhooks send numbers (epoch ms, or seconds),
   the REST API sends ISO strings. #}
{% macro transcript_ts(json_value) -%}
    case
        when json_type({{ json_value }}) in ('UBIGINT', 'BIGINT', 'DOUBLE')
            then case when ({{ json_value }})::double > 100000000000
                      then make_timestamptz((({{ json_value }})::double * 1000)::bigint)
                      else make_timestamptz((({{ json_value }})::double * 1000000)::bigint) end
        when json_type({{ json_value }}) = 'VARCHAR' then try_cast(({{ json_value }})->>'$' as timestamptz)
    end
{%- endmacro %}

{% macro word_count(text) -%}
    case when {{ text }} is null or trim({{ text }}) = '' then 0
         else len(regexp_split_to_array(trim({{ text }}), '\s+')) end
{%- endmacro %}

{# Sessions whose sources changed since this incremental model last ran. #}
{% macro touched_sessions() -%}
    {% if is_incremental() %}
    select session_id from {{ ref('int_session_sources') }}
    where source_loaded_at > (select coalesce(max(source_loaded_at), '1970-01-01'::timestamptz) from {{ this }})
    {% else %}
    select session_id from {{ ref('int_session_sources') }}
    {% endif %}
{%- endmacro %}
