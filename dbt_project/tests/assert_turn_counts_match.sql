{{ config(meta={'dagster': {'ref': {'name': 'fct_sessions'}}}) }}
-- fct_sessions' turn counts agree with fct_turns (nothing double counted).
select f.session_id
from {{ under_test(ref('fct_sessions')) }} f
left join (select session_id, count(*) as n from {{ ref('fct_turns') }}
           where session_id in (select session_id from {{ under_test(ref('fct_sessions')) }}) group by 1) t using (session_id)
where f.turns <> coalesce(t.n, 0)
