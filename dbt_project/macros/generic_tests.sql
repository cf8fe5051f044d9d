{% test unique_combination(model, columns, changed=none) %}
{#- The grain: no two rows share these columns. With changed='customers' (a table keyed by customer_id),
    an incremental build checks the rows of the customers it recomputed (lake.changed_customers) only:
    every other customer's rows are those of the published warehouse, which passed this test, so a
    duplicate can only be among them; a full build checks every row. -#}
select {{ columns | join(', ') }}, count(*) as n
from {{ model }}
{{ recomputed_rows_only(changed, 'unique_combination') }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}

{% macro recomputed_rows_only(changed, test) -%}
{#- A test's where clause for changed='customers' (a table keyed by customer_id): in an incremental
    build, the rows of the customers it recomputed (lake.changed_customers); in a full build, every
    row. Nothing for changed=none. -#}
{%- if changed == 'customers' -%}
where customer_id in (select customer_id from {{ source('lake', 'changed_customers') }})
    or (select json_extract_string(state, '$.mode') from {{ source('lake', '_load_state') }}) <> 'incremental'
{%- elif changed is not none -%}
{{ exceptions.raise_compiler_error(test ~ ": changed must be 'customers', not " ~ changed) }}
{%- endif -%}
{%- endmacro %}

{% test column_rules(model, not_null=[], non_negative=[], between_zero_and_one=[], accepted_values={}, changed=none) %}
{#- A model's row rules in one test and one scan: dbt spends ~50 ms of its own work on every test
    node, more than these queries take, so one node per model instead of one per rule and column.
    Fails with one row per broken rule: the rule, the column and how many rows break it.
    not_null: never null. non_negative: never below 0. between_zero_and_one: a fraction, 0 to 1.
    accepted_values ({column: [values]}): one of the values. Null passes every rule but not_null, as
    in dbt's own tests (a rate is null where its denominator is 0). changed='customers': as in
    unique_combination, an incremental build checks the recomputed customers' rows only. -#}
{%- set rules = [] -%}
{%- for column in not_null -%}
    {%- do rules.append(('not_null', column, '"' ~ column ~ '" is null')) -%}
{%- endfor -%}
{%- for column in non_negative -%}
    {%- do rules.append(('non_negative', column, '"' ~ column ~ '" < 0')) -%}
{%- endfor -%}
{%- for column in between_zero_and_one -%}
    {%- do rules.append(('between_zero_and_one', column, '"' ~ column ~ '" not between 0 and 1')) -%}
{%- endfor -%}
{%- for column, values in accepted_values.items() -%}
    {%- set quoted = [] -%}
    {%- for value in values -%}{%- do quoted.append("'" ~ value ~ "'") -%}{%- endfor -%}
    {%- do rules.append(('accepted_values', column, '"' ~ column ~ '" not in (' ~ quoted | join(', ') ~ ')')) -%}
{%- endfor -%}
{%- if not rules -%}
{{ exceptions.raise_compiler_error("column_rules: no rule given") }}
{%- endif -%}
with counts as (
    select
    {%- for rule, column, condition in rules %}
        count(*) filter (where {{ condition }}) as broken_{{ loop.index }}{{ "," if not loop.last }}
    {%- endfor %}
    from {{ model }}
    {{ recomputed_rows_only(changed, 'column_rules') }}
)
{%- for rule, column, condition in rules %}
select '{{ rule }}' as rule, '{{ column }}' as column_name, broken_{{ loop.index }} as failing_rows
from counts where broken_{{ loop.index }} > 0
{{ "union all" if not loop.last }}
{%- endfor %}
{% endtest %}
