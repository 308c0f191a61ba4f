-- Every session known from any source, with the newest load time across its sources:
-- the incremental marts rebuild exactly the sessions whose sources changed.
{{ session_sources() }}
