{{ config(materialized='view') }}

{#- The mrr_monthly columns, in order; closed months take them from the figures frozen at their close. -#}
{%- set columns = [
    'mrr', 'arr', 'active_customers', 'new_mrr', 'expansion_mrr', 'reactivation_mrr', 'contraction_mrr',
    'churned_mrr', 'net_new_mrr', 'new_customers', 'reactivated_customers', 'churned_customers', 'previous_mrr',
    'previous_active_customers', 'customer_churn_rate', 'gross_mrr_churn_rate', 'net_mrr_churn_rate', 'arpa',
    'quick_ratio', 'trailing_customer_churn_rate', 'ltv', 'ltv_null_reason', 'net_mrr_retention',
] -%}

with live as (
    select * from {{ ref('mrr_monthly') }}
),

status as (
    select * from {{ ref('int_period_status') }}
),

closed_figures as (
    select * from {{ ref('stg_closed_figures') }}
),

frozen as (
    select closed_figures.*
    from closed_figures
    inner join status
        on closed_figures."month" = status."month"
        and closed_figures.closed_at = status.closed_at
    where status.is_closed
),

-- an open month right after a closed one carries what the restated truth moved since that close
adjustment as (
    select
        cast(frozen."month" + interval 1 month as date) as "month",
        {{ money('live.mrr - frozen.mrr') }} as restatement_adjustment_mrr
    from frozen
    inner join live
        on frozen."month" = live."month"
),

closed_months as (
    select
        live."month",
        {%- for c in columns %}
        frozen.{{ c }},
        {%- endfor %}
        {{ money('frozen.restatement_adjustment_mrr') }} as restatement_adjustment_mrr,
        'closed' as period_status,
        frozen.closed_at
    from live
    inner join frozen
        on live."month" = frozen."month"
),

open_months as (
    select
        live."month",
        {%- for c in columns %}
        live.{{ c }},
        {%- endfor %}
        {{ money('coalesce(adjustment.restatement_adjustment_mrr, 0)') }} as restatement_adjustment_mrr,
        'open' as period_status,
        cast(null as timestamp with time zone) as closed_at
    from live
    left join frozen
        on live."month" = frozen."month"
    left join adjustment
        on live."month" = adjustment."month"
    where frozen."month" is null
),

final as (
    select * from closed_months
    union all
    select * from open_months
)

select * from final
order by "month"
