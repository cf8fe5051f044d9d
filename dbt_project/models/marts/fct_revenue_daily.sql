-- depends_on: {{ source('lake', 'changed_days') }}
{{ config(
    materialized='incremental',
    unique_key=['date', 'currency'],
    incremental_strategy='delete+insert',
    pre_hook="{{ delete_changed_rows('\"date\"', 'changed_days', '\"date\"') }}",
) }}
-- Payments are converted once, per transaction, by the Beam metrics stage (lake table
-- revenue_daily); this model only derives the net figures. Incremental on days.
with revenue_daily as (
    select * from {{ ref('stg_revenue_daily') }}
    where {{ only_changed('"date"', 'changed_days', '"date"') }}
),

final as (
    select
        "date",
        currency,
        gross_revenue,
        tax,
        refunds,
        {{ money('gross_revenue - tax - refunds') }} as net_revenue,
        {{ money('gross_revenue_reporting - tax_reporting - refunds_reporting') }} as net_revenue_reporting,
        gross_revenue_reporting,
        tax_reporting,
        refunds_reporting,
        invoices_paid,
        refund_count
    from revenue_daily
)

select * from final
