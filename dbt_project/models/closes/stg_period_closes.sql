with source as (
    select * from {{ source('lake_periods', 'period_closes') }}
),

renamed as (
    select
        cast("month" as date) as "month",
        action,
        acted_at,
        acted_by,
        note,
        lake_versions
    from source
)

select * from renamed
