{#- Exact decimal division: DuckDB's decimal `/` returns DOUBLE, and we never use floats.
    Inputs are decimals of scale <= 10 or integers; the result is DECIMAL(38, scale), rounded half
    away from zero, or null when the denominator is 0 or null. -#}
{% macro divide(numerator, denominator, scale=10) -%}
(
    case
        when ({{ denominator }}) is null or ({{ denominator }}) = 0 or ({{ numerator }}) is null then null
        else cast(
            sign(cast(cast({{ numerator }} as decimal(38, 10)) * 10000000000 as hugeint)) * sign(cast(cast({{ denominator }} as decimal(38, 10)) * 10000000000 as hugeint))
            * ((2 * abs(cast(cast({{ numerator }} as decimal(38, 10)) * 10000000000 as hugeint)) * cast(10 ** {{ scale }} as hugeint)
                + abs(cast(cast({{ denominator }} as decimal(38, 10)) * 10000000000 as hugeint)))
               // (2 * abs(cast(cast({{ denominator }} as decimal(38, 10)) * 10000000000 as hugeint))))
            as decimal(38, 0)
        ) * {{ '0.' ~ ('0' * (scale - 1)) ~ '1' }}
    end
)
{%- endmacro %}

{% macro money(expression) -%}
cast({{ expression }} as decimal(38, 6))
{%- endmacro %}

{% macro month_of(expression) -%}
cast(date_trunc('month', {{ expression }}) as date)
{%- endmacro %}

{% macro predicted_ltv(current_mrr, trailing_churn_rate) -%}
{#- current MRR / trailing customer churn rate, rounded to the minor unit; null when not paying or
    when that rate is 0 or undefined (never infinity). -#}
case
    when {{ current_mrr }} > 0 and {{ trailing_churn_rate }} > 0
        then {{ money('round(' ~ divide(current_mrr, trailing_churn_rate, 6) ~ ', ' ~ var('reporting_exponent') ~ ')') }}
end
{%- endmacro %}
