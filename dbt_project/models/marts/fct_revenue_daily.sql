with payments as (
    select * from {{ ref('int_payments_converted_to_reporting') }}
),

daily as (
    select
        event_date as "date",
        currency,
        {{ money("coalesce(sum(amount) filter (where event_type = 'invoice.paid'), 0)") }} as gross_revenue,
        {{ money("coalesce(sum(tax) filter (where event_type = 'invoice.paid'), 0)") }} as tax,
        {{ money("coalesce(sum(amount) filter (where event_type = 'charge.refunded'), 0)") }} as refunds,
        {{ money("coalesce(sum(amount_reporting) filter (where event_type = 'invoice.paid'), 0)") }}
            as gross_revenue_reporting,
        {{ money("coalesce(sum(tax_reporting) filter (where event_type = 'invoice.paid'), 0)") }} as tax_reporting,
        {{ money("coalesce(sum(amount_reporting) filter (where event_type = 'charge.refunded'), 0)") }}
            as refunds_reporting,
        count(*) filter (where event_type = 'invoice.paid') as invoices_paid,
        count(*) filter (where event_type = 'charge.refunded') as refund_count
    from payments
    group by event_date, currency
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
    from daily
)

select * from final
