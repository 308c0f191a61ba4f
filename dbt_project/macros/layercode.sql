{# A transcript timestamp as a timestamptz: webhooks send numbers (epoch ms, or seconds),
   the REST API sends ISO strings. #}
{% macro transcript_ts(json_value) -%}
    {#- try(): an absurd number (1e300, a negative epoch) is no timestamp, never an error -#}
    case
        when json_type({{ json_value }}) in ('UBIGINT', 'BIGINT', 'DOUBLE')
            then case when ({{ json_value }})::double > 100000000000
                      then try(make_timestamptz(try_cast(({{ json_value }})::double * 1000 as bigint)))
                      else try(make_timestamptz(try_cast(({{ json_value }})::double * 1000000 as bigint))) end
        when json_type({{ json_value }}) = 'VARCHAR' then try_cast(({{ json_value }})->>'$' as timestamptz)
    end
{%- endmacro %}

{% macro word_count(text) -%}
    case when {{ text }} is null or trim({{ text }}) = '' then 0
         else len(regexp_split_to_array(trim({{ text }}), '\s+')) end
{%- endmacro %}


{# A duration or latency from a payload, or null when it is not a number in [0, upper]:
   a negative, infinite or absurd value (1e300 ms) is no measurement, and must neither fail a
   test that guards the marts nor poison an average. `payload_number_out_of_range` (a warning
   test) counts what was set aside. #}
{% macro measure(json_text, upper) -%}
    case when try_cast({{ json_text }} as double) between 0 and {{ upper }}
         then try_cast({{ json_text }} as double) end
{%- endmacro %}

{# Text as compared across sources (a `message` and its transcript turn): lower case, no
   punctuation, single spaces. #}
{% macro comparable_text(text) -%}
    trim(regexp_replace(regexp_replace(lower(coalesce({{ text }}, '')), '[[:punct:]]', '', 'g'), '\s+', ' ', 'g'))
{%- endmacro %}

{# How alike two comparable texts are, 0 to 1 (1 - edit distance / longer length); null when
   either is empty. #}
{% macro text_similarity(a, b) -%}
    1 - levenshtein({{ a }}, {{ b }}) / nullif(greatest(length({{ a }}), length({{ b }})), 0)::double
{%- endmacro %}
