with source as (
    select * from {{ source('lake', 'revenue_daily') }}
),

renamed as (
    select
        cast("date" as date) as "date",
        currency,
        {{ money('gross_revenue') }} as gross_revenue,
        {{ money('tax') }} as tax,
        {{ money('refunds') }} as refunds,
        {{ money('gross_revenue_reporting') }} as gross_revenue_reporting,
        {{ money('tax_reporting') }} as tax_reporting,
        {{ money('refunds_reporting') }} as refunds_reporting,
        invoices_paid,
        refund_count,
        reporting_currency
    from source
    where cast("date" as date) <= cast('{{ var("as_of") }}' as date)
)

select * from renamed
