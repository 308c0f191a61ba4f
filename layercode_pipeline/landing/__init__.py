"""Everything about landed files and objects, below the listener and the ingest: durable
writes and the quarantine (`durable`), local segments (`segments`), object storage
(`objects`). The envelope and the names are the wire contract's (`contract/landing.py`)."""
