{{ config(materialized='view') }}

with source as (
    select * from {{ source('lake_periods', 'restatement_events') }}
),

final as (
    select
        cast("month" as date) as "month",
        run_id,
        close_acted_at,
        affects,
        event_id,
        event_type,
        customer_id,
        occurred_at,
        effective_at
    from source
)

select * from final
