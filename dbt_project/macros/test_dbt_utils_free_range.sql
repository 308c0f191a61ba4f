{#- Values between min_value and max_value (inclusive; either bound optional); nulls pass.
    dbt_utils' accepted_range without the package (dbt deps would need GitHub). -#}
{% test dbt_utils_free_range(model, column_name, min_value=none, max_value=none) %}
select {{ column_name }} from {{ model }}
where {{ column_name }} is not null and (
    false
    {% if min_value is not none %} or {{ column_name }} < {{ min_value }}{% endif %}
    {% if max_value is not none %} or {{ column_name }} > {{ max_value }}{% endif %}
)
{% endtest %}
