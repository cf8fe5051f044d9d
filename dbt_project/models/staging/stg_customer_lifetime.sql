with source as (
    select * from {{ source('lake', 'customer_lifetime') }}
),

renamed as (
    select
        customer_id,
        reporting_currency,
        first_event_month,
        first_paid_month,
        last_paid_month,
        last_churn_month,
        months_active,
        churn_count,
        {{ money('current_mrr') }} as current_mrr,
        {{ money('lifetime_revenue') }} as lifetime_revenue,
        cast(as_of as date) as as_of
    from source
)

select * from renamed
