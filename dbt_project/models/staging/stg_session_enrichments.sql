-- Every enrichment version is kept; is_latest marks the newest successful one per session.
-- (the SQL is the macro session_enrichments, which the incremental marts call for their sessions only)
{{ session_enrichments() }}
