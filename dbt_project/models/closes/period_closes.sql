{{ config(materialized='view') }}

with actions as (
    select * from {{ ref('stg_period_closes') }}
),

final as (
    select
        "month",
        action,
        acted_at,
        acted_by,
        note,
        lake_versions
    from actions
)

select * from final
order by acted_at, "month"
