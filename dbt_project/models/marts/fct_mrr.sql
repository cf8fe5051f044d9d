with customer_months as (
    select * from {{ ref('int_customer_months_trimmed_to_paid_life') }}
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
