with source as (
    select * from {{ source('lake', 'dead_letter') }}
),

renamed as (
    select
        source_file,
        source_line,
        reason,
        message,
        event_id,
        raw_sha256
    from source
)

select * from renamed
