-- depends_on: {{ source('lake', 'changed_customers') }}
{{ config(
    materialized='incremental',
    unique_key=['customer_id', 'month'],
    incremental_strategy='delete+insert',
    pre_hook="{{ delete_changed_rows('customer_id', 'changed_customers', 'customer_id') }}",
) }}
-- Incremental on customers: a build recomputes every month of the customers whose lake rows changed.
with customer_months as (
    select * from {{ ref('int_customer_months_trimmed_to_paid_life') }}
    where {{ only_changed('customer_id', 'changed_customers', 'customer_id') }}
),

final as (
    select
        customer_id,
        "month",
        mrr,
        previous_mrr,
        mrr_change,
        movement,
        mrr > 0 as is_active,
        active_subscriptions,
        reporting_currency
    from customer_months
)

select * from final
