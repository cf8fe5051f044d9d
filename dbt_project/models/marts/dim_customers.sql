-- depends_on: {{ source('lake', 'changed_customers') }}
{{ config(
    materialized='incremental',
    unique_key=['customer_id'],
    incremental_strategy='delete+insert',
    pre_hook="{{ delete_changed_rows('customer_id', 'changed_customers', 'customer_id') }}",
    post_hook="{{ refresh_as_of_columns() }}",
) }}
-- Incremental on customers. Two columns depend on the as-of month rather than on the customer's
-- own rows (as_of, and predicted_ltv through the trailing churn rate of all customers): the
-- post-hook brings them up to date on every row, with the same expressions as below.
with lifetime as (
    select * from {{ ref('stg_customer_lifetime') }}
    where {{ only_changed('customer_id', 'changed_customers', 'customer_id') }}
),

customer_created as (
    select
        customer_id,
        name,
        country,
        segment,
        email_hmac,
        row_number() over (partition by customer_id order by occurred_at desc, event_id desc) as recency
    from {{ ref('stg_events') }}
    where event_type = 'customer.created'
        and {{ only_changed('customer_id', 'changed_customers', 'customer_id') }}
),

latest_profile as (
    select * from customer_created where recency = 1
),

as_of_month as (
    select trailing_customer_churn_rate
    from {{ ref('mrr_monthly') }}
    where "month" = {{ month_of("cast('" ~ var('as_of') ~ "' as date)") }}
),

final as (
    select
        lifetime.customer_id,
        lifetime.first_event_month,
        lifetime.first_paid_month,
        lifetime.last_paid_month,
        lifetime.last_churn_month,
        lifetime.months_active,
        lifetime.churn_count,
        lifetime.current_mrr,
        lifetime.lifetime_revenue,
        {{ predicted_ltv('lifetime.current_mrr', 'as_of_month.trailing_customer_churn_rate') }} as predicted_ltv,
        case
            when lifetime.current_mrr > 0 then 'active'
            when lifetime.first_paid_month is not null then 'churned'
            else 'never_paid'
        end as status,
        latest_profile.country,
        latest_profile.segment,
        latest_profile.name,
        latest_profile.email_hmac,
        lifetime.reporting_currency,
        lifetime.as_of
    from lifetime
    cross join as_of_month
    left join latest_profile
        on lifetime.customer_id = latest_profile.customer_id
)

select * from final
