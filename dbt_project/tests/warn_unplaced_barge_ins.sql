{{ config(severity='warn') }}
-- Barge-ins a `message` webhook reported that could not be tied to a transcript turn (its words
-- match no caller turn and its assistant_turn_id names no known reply): counted in
-- fct_sessions.unplaced_interruptions, and listed here so they are seen.
select session_id, agent_id, interruptions, unplaced_interruptions
from {{ under_test(ref('fct_sessions')) }}
where unplaced_interruptions > 0
