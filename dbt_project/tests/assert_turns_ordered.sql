-- Turn positions run 1..n without gaps (our numbering: an error if not).
with t as (
    select session_id, position,
           row_number() over (partition by session_id order by position) as expected_position
    from {{ under_test(ref('fct_turns')) }}
)
select * from t
where position <> expected_position
