-- fct_mrr's grain: from each customer's first paid month through each churn month.
-- Zero months between a churn and a reactivation stay (inactive); months after the
-- last churn month and before the first paid month (trials, usage only) go.
-- The first and last paid months are the Beam stage's (customer_lifetime): defined once.
with customer_months as (
    select * from {{ ref('stg_customer_months') }}
),

paid_bounds as (
    select
        customer_id,
        first_paid_month,
        last_paid_month
    from {{ ref('stg_customer_lifetime') }}
),

trimmed as (
    select
        customer_months.*,
        paid_bounds.first_paid_month,
        paid_bounds.last_paid_month
    from customer_months
    inner join paid_bounds
        on customer_months.customer_id = paid_bounds.customer_id
    where paid_bounds.first_paid_month is not null
        and customer_months."month" >= paid_bounds.first_paid_month
        and (
            customer_months."month" <= paid_bounds.last_paid_month
            or (customer_months.movement = 'churn'
                and customer_months."month" = cast(paid_bounds.last_paid_month + interval 1 month as date))
        )
)

select * from trimmed
