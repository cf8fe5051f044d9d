with source as (
    select * from {{ source('lake', 'customer_months') }}
),

renamed as (
    select
        customer_id,
        cast("month" as date) as "month",
        reporting_currency,
        {{ money('mrr') }} as mrr,
        {{ money('previous_mrr') }} as previous_mrr,
        {{ money('mrr_change') }} as mrr_change,
        movement,
        has_paid_before,
        active_subscriptions,
        mrr_by_currency,
        {{ money('revenue_paid') }} as revenue_paid,
        {{ money('tax') }} as tax,
        {{ money('refunds') }} as refunds,
        {{ money('net_revenue') }} as net_revenue,
        invoices_paid,
        failed_payments,
        refund_count,
        usage
    from source
    where cast("month" as date) <= {{ month_of("cast('" ~ var('as_of') ~ "' as date)") }}
)

select * from renamed
