-- depends_on: {{ source('lake', 'changed_customers') }}
{{ config(
    materialized='incremental',
    unique_key=['customer_id', 'month', 'meter'],
    incremental_strategy='delete+insert',
    pre_hook="{{ delete_changed_rows('customer_id', 'changed_customers', 'customer_id') }}",
) }}
-- Incremental on customers, like fct_mrr (usage comes from the same customer_months rows).
with usage as (
    select * from {{ ref('int_usage_unnested_by_meter') }}
    where {{ only_changed('customer_id', 'changed_customers', 'customer_id') }}
),

price_book as (
    select * from {{ ref('stg_price_book') }}
),

final as (
    select
        usage.customer_id,
        usage."month",
        usage.meter,
        usage.quantity,
        price_book.unit_price,
        {{ money('round(usage.quantity * price_book.unit_price, ' ~ var('reporting_exponent') ~ ')') }} as usage_revenue
    from usage
    left join price_book
        on usage.meter = price_book.meter
)

select * from final
