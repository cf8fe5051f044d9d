with source as (
    select * from {{ source('lake', 'events') }}
),

renamed as (
    select
        event_id,
        event_type,
        occurred_at,
        cast(occurred_at as date) as event_date,
        customer_id,
        subscription_id,
        plan_id,
        invoice_id,
        currency,
        cast(currency_exponent as integer) as currency_exponent,
        unit_amount as unit_amount_minor,
        quantity,
        "interval" as billing_interval,
        interval_count,
        trial_end,
        effective_at,
        amount as amount_minor,
        coalesce(tax, 0) as tax_minor,
        period_start,
        period_end,
        attempt,
        reason,
        name,
        country,
        segment,
        email_hmac,
        attributes,
        source_file,
        source_line
    from source
    where cast(occurred_at as date) <= cast('{{ var("as_of") }}' as date)
)

select * from renamed
