"""The pipeline's working parts, called by the Dagster assets, the CLI and the demo: the
warehouse seam, the ingest, the Layercode REST client, recordings, agents, enrichment and
the serving copy. They do real I/O (DuckDB, HTTP, files); nothing here imports Dagster."""
