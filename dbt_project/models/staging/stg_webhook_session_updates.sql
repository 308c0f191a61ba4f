-- session.update: the recording's outcome; the latest one per session wins.
{{ session_updates() }}
