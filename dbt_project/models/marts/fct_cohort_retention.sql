with customer_months as (
    select * from {{ ref('stg_customer_months') }}
),

lifetime as (
    select * from {{ ref('stg_customer_lifetime') }}
),

cohort_members as (
    select
        lifetime.customer_id,
        lifetime.first_paid_month as cohort_month,
        customer_months.mrr as starting_mrr
    from lifetime
    inner join customer_months
        on lifetime.customer_id = customer_months.customer_id
        and lifetime.first_paid_month = customer_months."month"
    where lifetime.first_paid_month is not null
),

cohort_sizes as (
    select
        cohort_month,
        count(*) as customers,
        sum(starting_mrr) as starting_mrr
    from cohort_members
    group by cohort_month
),

member_months as (
    select
        cohort_members.cohort_month,
        cohort_members.customer_id,
        cohort_members.starting_mrr,
        datediff('month', cohort_members.cohort_month, customer_months."month") as months_since_start,
        customer_months.mrr
    from cohort_members
    inner join customer_months
        on cohort_members.customer_id = customer_months.customer_id
        and customer_months."month" >= cohort_members.cohort_month
),

retention as (
    select
        cohort_month,
        months_since_start,
        count(*) filter (where mrr > 0) as retained_customers,
        sum(mrr) as mrr,
        sum(least(mrr, starting_mrr)) as mrr_without_expansion
    from member_months
    group by cohort_month, months_since_start
),

final as (
    select
        retention.cohort_month,
        retention.months_since_start,
        cohort_sizes.customers,
        retention.retained_customers,
        {{ money('retention.mrr') }} as mrr,
        {{ money('cohort_sizes.starting_mrr') }} as starting_mrr,
        {{ divide('retention.retained_customers', 'cohort_sizes.customers') }} as logo_retention,
        {{ divide('retention.mrr', 'cohort_sizes.starting_mrr') }} as net_mrr_retention,
        {{ divide('retention.mrr_without_expansion', 'cohort_sizes.starting_mrr') }} as gross_mrr_retention
    from retention
    inner join cohort_sizes
        on retention.cohort_month = cohort_sizes.cohort_month
)

select * from final
