-- Turn positions run 1..n without gaps, and spoken times never go backwards.
with t as (
    select session_id, position, spoken_at,
           lag(spoken_at) over (partition by session_id order by position) as previous_spoken_at,
           row_number() over (partition by session_id order by position) as expected_position
    from {{ ref('fct_turns') }}
)
select * from t
where position <> expected_position or spoken_at < previous_spoken_at
