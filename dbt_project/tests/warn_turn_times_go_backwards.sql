{{ config(severity='warn') }}
-- Spoken times that go backwards within a session: the platform's timestamps, kept as they
-- came. A warning, never an error: one odd transcript must not hold back the marts.
with t as (
    select session_id, position, spoken_at,
           lag(spoken_at) over (partition by session_id order by position) as previous_spoken_at
    from {{ under_test(ref('fct_turns')) }}
)
select * from t
where spoken_at < previous_spoken_at
