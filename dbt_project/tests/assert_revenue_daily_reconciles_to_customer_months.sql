-- Net revenue per month in the reporting currency: daily facts (dbt, per transaction) equal
-- the Beam stage's customer_months (same per-transaction rounding), to the cent.
with daily as (
    select cast(date_trunc('month', "date") as date) as "month", sum(net_revenue_reporting) as net_revenue
    from {{ ref('fct_revenue_daily') }}
    group by 1
),

beam as (
    select "month", sum(net_revenue) as net_revenue
    from {{ ref('stg_customer_months') }}
    group by 1
)

select coalesce(daily."month", beam."month") as "month", daily.net_revenue, beam.net_revenue as beam_net_revenue
from daily
full outer join beam
    on daily."month" = beam."month"
where coalesce(daily.net_revenue, 0) <> coalesce(beam.net_revenue, 0)
