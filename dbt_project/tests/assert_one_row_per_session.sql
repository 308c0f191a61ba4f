{{ config(meta={'dagster': {'ref': {'name': 'fct_sessions'}}}) }}
-- Every session seen in any source has exactly one row in fct_sessions.
select s.session_id, count(f.session_id) as n
from {{ under_test(ref('int_session_sources')) }} s
left join {{ ref('fct_sessions') }} f using (session_id)
group by s.session_id
having count(f.session_id) <> 1
