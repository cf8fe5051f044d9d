with source as (
    select * from {{ ref('price_book') }}
),

renamed as (
    select
        meter,
        cast(unit_price as decimal(28, 10)) as unit_price,
        unit
    from source
)

select * from renamed
