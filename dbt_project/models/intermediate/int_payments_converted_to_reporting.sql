-- Every paid invoice and refund, converted at the FX rate of its own day and rounded to the
-- reporting currency's minor unit per transaction (the same rule as the Beam stage).
with events as (
    select * from {{ ref('stg_events') }}
    where event_type in ('invoice.paid', 'charge.refunded')
),

fx_rates as (
    select * from {{ ref('stg_fx_rates') }}
),

with_rate as (
    select
        events.*,
        case
            when events.currency = '{{ var("reporting_currency") }}' then cast(1 as decimal(28, 10))
            else fx_rates.rate
        end as fx_rate,
        case events.currency_exponent
            when 0 then cast(1 as decimal(5, 4))
            when 1 then cast(0.1 as decimal(5, 4))
            when 2 then cast(0.01 as decimal(5, 4))
            when 3 then cast(0.001 as decimal(5, 4))
            when 4 then cast(0.0001 as decimal(5, 4))
        end as minor_unit
    from events
    asof left join fx_rates
        on events.currency = fx_rates.currency
        and events.event_date >= fx_rates.valid_from
),

converted as (
    select
        event_id,
        event_type,
        event_date,
        {{ month_of('event_date') }} as "month",
        customer_id,
        invoice_id,
        currency,
        fx_rate,
        {{ money('amount_minor * minor_unit') }} as amount,
        {{ money('tax_minor * minor_unit') }} as tax,
        {{ money('round(amount_minor * (fx_rate * minor_unit), ' ~ var('reporting_exponent') ~ ')') }} as amount_reporting,
        {{ money('round(tax_minor * (fx_rate * minor_unit), ' ~ var('reporting_exponent') ~ ')') }} as tax_reporting
    from with_rate
)

select * from converted
