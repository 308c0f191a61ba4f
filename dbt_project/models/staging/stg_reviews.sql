-- One row per review; is_latest marks each session's newest (what evaluation and accuracy use).
select
    review_id,
    session_id,
    reviewer,
    reviewed_at,
    caller_name,
    outcome,
    sentiment,
    topics,
    quality_score,
    comment,
    flagged_turns,
    json_array_length(flagged_turns) as flagged_turn_count,
    shown->>'$.provider' as shown_provider,
    shown->>'$.model' as shown_model,
    shown->>'$.prompt_version' as shown_prompt_version,
    shown->>'$.caller_name' as shown_caller_name,
    shown->>'$.outcome' as shown_outcome,
    shown->>'$.sentiment' as shown_sentiment,
    try_cast(shown->>'$.quality_score' as integer) as shown_quality_score,
    row_number() over (partition by session_id order by reviewed_at desc, review_id desc) = 1 as is_latest,
    ingested_at
from {{ source('raw', 'reviews') }}
