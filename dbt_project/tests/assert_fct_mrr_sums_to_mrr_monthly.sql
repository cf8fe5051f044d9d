-- Every month's total in mrr_monthly equals the sum of fct_mrr, and so does each movement.
with from_facts as (
    select "month", sum(mrr) as mrr, sum(mrr_change) as net_new_mrr
    from {{ ref('fct_mrr') }}
    group by "month"
)

select mrr_monthly."month", mrr_monthly.mrr, from_facts.mrr as fact_mrr
from {{ ref('mrr_monthly') }} as mrr_monthly
left join from_facts
    on mrr_monthly."month" = from_facts."month"
where mrr_monthly.mrr <> coalesce(from_facts.mrr, 0)
    or mrr_monthly.net_new_mrr <> coalesce(from_facts.net_new_mrr, 0)
