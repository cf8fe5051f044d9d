-- The reported view's bridge holds exactly in every row (CONTRACT section 7):
-- mrr = previous reported mrr + restatement_adjustment_mrr + new + reactivation + expansion - contraction - churned.
-- One exception, by construction: a closed month whose previous month is open can only arise when late
-- events create a month before the first closed one (months close in order); its frozen bridge starts
-- from the figures of its own close.
with reported as (
    select
        *,
        lag(mrr, 1, 0) over (order by "month") as previous_reported_mrr,
        lag(period_status, 1, 'closed') over (order by "month") as previous_status
    from {{ ref('mrr_monthly_reported') }}
)

select
    "month",
    mrr,
    previous_reported_mrr + restatement_adjustment_mrr + new_mrr + reactivation_mrr + expansion_mrr
        - contraction_mrr - churned_mrr as bridged_mrr
from reported
where mrr <> previous_reported_mrr + restatement_adjustment_mrr + new_mrr + reactivation_mrr + expansion_mrr
        - contraction_mrr - churned_mrr
    and not (period_status = 'closed' and previous_status = 'open')
