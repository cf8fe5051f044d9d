-- mrr(t) = mrr(t-1) + new + reactivation + expansion - contraction - churned, exactly, every month.
select
    "month",
    mrr,
    previous_mrr + new_mrr + reactivation_mrr + expansion_mrr - contraction_mrr - churned_mrr as bridged_mrr
from {{ ref('mrr_monthly') }}
where mrr <> previous_mrr + new_mrr + reactivation_mrr + expansion_mrr - contraction_mrr - churned_mrr
