-- Payments are converted once, per transaction, by the Beam metrics stage (lake table
-- revenue_daily); this model only derives the net figures.
with revenue_daily as (
    select * from {{ ref('stg_revenue_daily') }}
),

final as (
    select
        "date",
        currency,
        gross_revenue,
        tax,
        refunds,
        {{ money('gross_revenue - tax - refunds') }} as net_revenue,
        {{ money('gross_revenue_reporting - tax_reporting - refunds_reporting') }} as net_revenue_reporting,
        gross_revenue_reporting,
        tax_reporting,
        refunds_reporting,
        invoices_paid,
        refund_count
    from revenue_daily
)

select * from final
