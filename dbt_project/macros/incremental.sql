{#- Incremental marts recompute every row of what changed in the lake since the published build
    (lake.changed_customers / lake.changed_days, written by `revenue transform` from the Delta log):
    a pre-hook deletes those rows first, so a key that no longer exists (a month trimmed off by a late
    cancellation) disappears too; the model then selects only the changed keys and dbt's
    delete+insert on the grain puts them in. On a full build (empty warehouse) the hooks do nothing. -#}

{% macro delete_changed_rows(column, changes, changes_column) -%}
{%- if is_incremental() -%}
delete from {{ this }} where {{ column }} in (select {{ changes_column }} from {{ source('lake', changes) }})
{%- else -%}
select 1
{%- endif -%}
{%- endmacro %}

{% macro only_changed(column, changes, changes_column) -%}
{%- if is_incremental() -%}
{{ column }} in (select {{ changes_column }} from {{ source('lake', changes) }})
{%- else -%}
true
{%- endif -%}
{%- endmacro %}

{% macro refresh_as_of_columns() -%}
{#- dim_customers: as_of and predicted_ltv of the customers this build did not recompute. -#}
{%- if is_incremental() -%}
update {{ this }} as customers
set
    as_of = cast('{{ var("as_of") }}' as date),
    predicted_ltv = {{ predicted_ltv('customers.current_mrr', 'as_of_month.trailing_customer_churn_rate') }}
from (
    select trailing_customer_churn_rate
    from {{ ref('mrr_monthly') }}
    where "month" = {{ month_of("cast('" ~ var('as_of') ~ "' as date)") }}
) as as_of_month
where customers.as_of is distinct from cast('{{ var("as_of") }}' as date)
    or customers.predicted_ltv is distinct from
        {{ predicted_ltv('customers.current_mrr', 'as_of_month.trailing_customer_churn_rate') }}
{%- else -%}
select 1
{%- endif -%}
{%- endmacro %}
