{{ config(materialized='view') }}

with source as (
    select * from {{ source('lake_periods', 'restatements') }}
),

final as (
    select
        cast("month" as date) as "month",
        metric,
        reported_value,
        restated_value,
        difference,
        events,
        run_id,
        detected_at,
        booked_in_month,
        close_acted_at,
        events_version,
        material
    from source
)

select * from final
order by detected_at, run_id, "month", metric
