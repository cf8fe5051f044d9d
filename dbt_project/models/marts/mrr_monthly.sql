with fct_mrr as (
    select * from {{ ref('fct_mrr') }}
),

customer_months as (
    select * from {{ ref('stg_customer_months') }}
),

-- The spine comes from the data and the as-of date, never from current_date.
spine as (
    select cast(range as date) as "month"
    from range(
        (select min("month") from customer_months),
        cast({{ month_of("cast('" ~ var('as_of') ~ "' as date)") }} + interval 1 month as date),
        interval 1 month
    )
),

monthly as (
    select
        "month",
        sum(mrr) as mrr,
        count(*) filter (where is_active) as active_customers,
        coalesce(sum(mrr_change) filter (where movement = 'new'), 0) as new_mrr,
        coalesce(sum(mrr_change) filter (where movement = 'expansion'), 0) as expansion_mrr,
        coalesce(sum(mrr_change) filter (where movement = 'reactivation'), 0) as reactivation_mrr,
        coalesce(-sum(mrr_change) filter (where movement = 'contraction'), 0) as contraction_mrr,
        coalesce(-sum(mrr_change) filter (where movement = 'churn'), 0) as churned_mrr,
        sum(mrr_change) as net_new_mrr,
        count(*) filter (where movement = 'new') as new_customers,
        count(*) filter (where movement = 'reactivation') as reactivated_customers,
        count(*) filter (where movement = 'churn') as churned_customers
    from fct_mrr
    group by "month"
),

filled as (
    select
        spine."month",
        {{ money('coalesce(monthly.mrr, 0)') }} as mrr,
        coalesce(monthly.active_customers, 0) as active_customers,
        {{ money('coalesce(monthly.new_mrr, 0)') }} as new_mrr,
        {{ money('coalesce(monthly.expansion_mrr, 0)') }} as expansion_mrr,
        {{ money('coalesce(monthly.reactivation_mrr, 0)') }} as reactivation_mrr,
        {{ money('coalesce(monthly.contraction_mrr, 0)') }} as contraction_mrr,
        {{ money('coalesce(monthly.churned_mrr, 0)') }} as churned_mrr,
        {{ money('coalesce(monthly.net_new_mrr, 0)') }} as net_new_mrr,
        coalesce(monthly.new_customers, 0) as new_customers,
        coalesce(monthly.reactivated_customers, 0) as reactivated_customers,
        coalesce(monthly.churned_customers, 0) as churned_customers
    from spine
    left join monthly
        on spine."month" = monthly."month"
),

with_previous as (
    select
        *,
        {{ money('lag(mrr, 1, 0) over (order by "month")') }} as previous_mrr,
        lag(active_customers, 1, 0) over (order by "month") as previous_active_customers
    from filled
),

rates as (
    select
        *,
        {{ money('mrr * 12') }} as arr,
        {{ divide('churned_customers', 'previous_active_customers') }} as customer_churn_rate,
        {{ divide('churned_mrr + contraction_mrr', 'previous_mrr') }} as gross_mrr_churn_rate,
        {{ divide('churned_mrr + contraction_mrr - expansion_mrr - reactivation_mrr', 'previous_mrr') }}
            as net_mrr_churn_rate,
        {{ money('round(' ~ divide('mrr', 'active_customers', 6) ~ ', ' ~ var('reporting_exponent') ~ ')') }} as arpa,
        {{ divide('new_mrr + expansion_mrr + reactivation_mrr', 'churned_mrr + contraction_mrr') }} as quick_ratio
    from with_previous
),

with_trailing_churn as (
    select
        *,
        sum(customer_churn_rate) over trailing_window as trailing_churn_sum,
        count(customer_churn_rate) over trailing_window as trailing_churn_months
    from rates
    window trailing_window as (
        order by "month" rows between {{ var('ltv_trailing_months') }} preceding and 1 preceding
    )
),

final as (
    select
        "month",
        mrr,
        arr,
        active_customers,
        new_mrr,
        expansion_mrr,
        reactivation_mrr,
        contraction_mrr,
        churned_mrr,
        net_new_mrr,
        new_customers,
        reactivated_customers,
        churned_customers,
        previous_mrr,
        previous_active_customers,
        customer_churn_rate,
        gross_mrr_churn_rate,
        net_mrr_churn_rate,
        arpa,
        quick_ratio,
        {{ divide('trailing_churn_sum', 'trailing_churn_months') }} as trailing_customer_churn_rate,
        case
            when arpa is null then null
            when trailing_churn_months = 0 then null
            when trailing_churn_sum = 0 then null
            else {{ money('round(' ~ divide('arpa', divide('trailing_churn_sum', 'trailing_churn_months'), 6) ~ ', '
                          ~ var('reporting_exponent') ~ ')') }}
        end as ltv,
        case
            when arpa is null then 'no active customers'
            when trailing_churn_months = 0 then 'no trailing months with a churn rate'
            when trailing_churn_sum = 0 then 'zero customer churn in the trailing months'
        end as ltv_null_reason,
        -- net revenue retention: the share of last month's MRR kept, expansion included
        cast(1 - net_mrr_churn_rate as decimal(38, 10)) as net_mrr_retention
    from with_trailing_churn
)

select * from final
