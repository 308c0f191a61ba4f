-- One row per transcript turn, from either transcript form (contract section 4):
-- session.end has one item per utterance (role, text, timestamp as a number);
-- the REST record has one item per exchange (user_message, assistant_message, ISO timestamp),
-- which splits into a user turn and an assistant turn. The webhook form wins when both exist.
{{ transcript_turns() }}
