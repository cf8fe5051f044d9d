with usage as (
    select * from {{ ref('int_usage_unnested_by_meter') }}
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
