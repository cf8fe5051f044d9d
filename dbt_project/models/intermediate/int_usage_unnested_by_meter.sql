-- Usage quantities per customer, month and meter, as aggregated by the Beam stage.
with customer_months as (
    select * from {{ ref('stg_customer_months') }}
),

unnested as (
    select
        customer_months.customer_id,
        customer_months."month",
        usage_item.meter,
        usage_item.quantity
    from customer_months
    cross join unnest(customer_months.usage) as usage_items (usage_item)
)

select * from unnested
