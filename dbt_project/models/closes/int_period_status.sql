-- A month is closed when its latest action is a close; closed_at identifies that close.
with actions as (
    select * from {{ ref('stg_period_closes') }}
),

ranked as (
    select
        "month",
        action,
        acted_at,
        row_number() over (partition by "month" order by acted_at desc) as recency
    from actions
),

final as (
    select
        "month",
        action = 'close' as is_closed,
        case when action = 'close' then acted_at end as closed_at
    from ranked
    where recency = 1
)

select * from final
