{#- Every generic test of the project, on the rows a pipeline run built, in one query (issue 27).

    A pipeline run (test_scope 'new') excludes the generic tests from its `dbt build` and runs
    this audit instead (tests/new_rows_audit.sql): each test's own SQL (the same test macro, the
    same `where` config, the same new-rows condition as `get_where_subquery` gives it), counted,
    one `union all` branch per test, one row per failing test. Each model's new rows are read
    once (a materialized CTE) for all of its tests. dbt's cost is per test node (about 65 ms each
    here, whatever the rows): two hundred nodes were most of a run's dbt time, and as many
    asset-check events to record; one query over the new rows is a fraction of a second.
    The scheduled full test run (test_scope 'all') runs every test as its own node over every
    row, recorded as its asset check; there the audit selects nothing. -#}

{% macro new_rows_audit() -%}
    {%- set nothing = "select null::varchar as test_id, null::varchar as model, 0 as failures where false" -%}
    {%- if not execute or var('test_scope', 'all') != 'new' -%}{{ return(nothing) }}{%- endif -%}
    {%- set declared = model.depends_on.nodes -%}
    {%- set branches = [] -%}
    {%- set subsets = {} -%}  {#- model name -> the CTE of its new rows (read once for all its tests) #}
    {%- for test in graph.nodes.values() | sort(attribute='unique_id') -%}
        {%- if test.resource_type == 'test' and test.test_metadata
              and (test.config.severity | lower) == 'error' and test.config.enabled -%}
            {%- set parent = graph.nodes.get(test.attached_node) -%}
            {%- if parent is none or parent.resource_type != 'model' -%}
                {{ exceptions.raise_compiler_error("new_rows_audit: test " ~ test.unique_id ~ " is not on a model") }}
            {%- endif -%}
            {%- if test.attached_node not in declared -%}
                {{ exceptions.raise_compiler_error("new_rows_audit: add `-- depends_on: {{ ref('" ~ parent.name
                    ~ "') }}` to tests/new_rows_audit.sql (its tests run in the audit)") }}
            {%- endif -%}
            {%- if parent.name not in subsets -%}
                {%- set relation = ref(parent.name) -%}
                {%- set new_rows = new_rows_condition(relation) -%}
                {%- do subsets.update({parent.name: (
                        "new_" ~ parent.name,
                        "select * from " ~ relation ~ ((" where (" ~ new_rows ~ ")") if new_rows else ""))}) -%}
            {%- endif -%}
            {%- set sql = audited_test_sql(test, subsets[parent.name][0]) -%}
            {%- do branches.append("select '" ~ test.name ~ "' as test_id, '" ~ parent.name ~ "' as model, count(*) as failures from (\n"
                                   ~ sql ~ "\n) as t") -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if not branches -%}{{ return(nothing) }}{%- endif -%}
    {#- each model's new rows read once (materialized), then every test of the model over them -#}
    with
    {% for name, cte in subsets.items() -%}
    {{ cte[0] }} as materialized ({{ cte[1] }}){{ "," if not loop.last }}
    {% endfor %}
    select test_id, model, failures from (
    {{ branches | join('\nunion all\n') }}
    ) as audited
    where failures > 0
{%- endmacro %}

{# One generic test's SQL, as its own node compiles it: its macro, over its model's new rows
   (`subject`: the audit's CTE of them) narrowed by the test's own `where` config. #}
{% macro audited_test_sql(test, subject) -%}
    {%- set kwargs = test.test_metadata.kwargs -%}
    {%- if test.config.where -%}
        {%- set subject = '(select * from ' ~ subject ~ ' where (' ~ test.config.where ~ ')) dbt_subquery' -%}
    {%- endif -%}
    {%- set name = test.test_metadata.name -%}
    {%- if name == 'not_null' -%}
        {{ return(test_not_null(model=subject, column_name=kwargs.column_name)) }}
    {%- elif name == 'unique' -%}
        {{ return(test_unique(model=subject, column_name=kwargs.column_name)) }}
    {%- elif name == 'accepted_values' -%}
        {{ return(test_accepted_values(model=subject, column_name=kwargs.column_name, values=kwargs['values'],
                                       quote=kwargs.get('quote', true))) }}
    {%- elif name == 'relationships' -%}
        {%- set target = modules.re.match("^\s*ref\(\s*['\"]([^'\"]+)['\"]\s*\)\s*$", kwargs.to) -%}
        {%- if not target -%}
            {{ exceptions.raise_compiler_error("new_rows_audit: " ~ test.unique_id ~ ": `to` must be ref('<model>')") }}
        {%- endif -%}
        {{ return(test_relationships(model=subject, column_name=kwargs.column_name, to=ref(target.group(1)),
                                     field=kwargs.field)) }}
    {%- elif name == 'dbt_utils_free_range' -%}
        {{ return(test_dbt_utils_free_range(model=subject, column_name=kwargs.column_name,
                                            min_value=kwargs.get('min_value'), max_value=kwargs.get('max_value'))) }}
    {%- elif name == 'dbt_utils_free_unique_combination' -%}
        {{ return(test_dbt_utils_free_unique_combination(model=subject, columns=kwargs.columns)) }}
    {%- else -%}
        {{ exceptions.raise_compiler_error("new_rows_audit: generic test `" ~ name ~ "` (" ~ test.unique_id
            ~ ") is not known to the audit: add it to audited_test_sql (macros/new_rows_audit.sql)") }}
    {%- endif -%}
{%- endmacro %}
