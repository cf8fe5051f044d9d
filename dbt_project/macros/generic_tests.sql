{% test unique_combination(model, columns, changed=none) %}
{#- The grain: no two rows share these columns. With changed='customers' (a table keyed by customer_id),
    an incremental build checks the rows of the customers it recomputed (lake.changed_customers) only:
    every other customer's rows are those of the published warehouse, which passed this test, so a
    duplicate can only be among them; a full build checks every row. -#}
select {{ columns | join(', ') }}, count(*) as n
from {{ model }}
{%- if changed == 'customers' %}
where customer_id in (select customer_id from {{ source('lake', 'changed_customers') }})
    or (select json_extract_string(state, '$.mode') from {{ source('lake', '_load_state') }}) <> 'incremental'
{%- elif changed is not none %}
{{ exceptions.raise_compiler_error("unique_combination: changed must be 'customers', not " ~ changed) }}
{%- endif %}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}

{% test non_negative(model, column_name) %}
select * from {{ model }} where {{ column_name }} < 0
{% endtest %}

{% test between_zero_and_one(model, column_name) %}
{#- Rates are fractions; null (undefined, e.g. a zero denominator) is allowed. -#}
select * from {{ model }} where {{ column_name }} < 0 or {{ column_name }} > 1
{% endtest %}
