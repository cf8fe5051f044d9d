with source as (
    select * from {{ source('lake', 'usage') }}
),

renamed as (
    select
        event_id,
        occurred_at,
        cast(occurred_at as date) as event_date,
        customer_id,
        meter,
        quantity,
        subscription_id
    from source
    where cast(occurred_at as date) <= cast('{{ var("as_of") }}' as date)
)

select * from renamed
