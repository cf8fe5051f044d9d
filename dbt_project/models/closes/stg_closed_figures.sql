with source as (
    select * from {{ source('lake_periods', 'closed_figures') }}
),

renamed as (
    select
        * exclude ("month"),
        cast("month" as date) as "month"
    from source
)

select * from renamed
