with source as (
    select * from {{ ref('fx_rates') }}
),

renamed as (
    select
        cast("date" as date) as valid_from,
        upper(currency) as currency,
        cast(rate as decimal(28, 10)) as rate
    from source
)

select * from renamed
