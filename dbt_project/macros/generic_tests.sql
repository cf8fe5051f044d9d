{% test unique_combination(model, columns) %}
{#- The grain: no two rows share these columns. -#}
select {{ columns | join(', ') }}, count(*) as n
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}

{% test non_negative(model, column_name) %}
select * from {{ model }} where {{ column_name }} < 0
{% endtest %}

{% test between_zero_and_one(model, column_name) %}
{#- Rates are fractions; null (undefined, e.g. a zero denominator) is allowed. -#}
select * from {{ model }} where {{ column_name }} < 0 or {{ column_name }} > 1
{% endtest %}
