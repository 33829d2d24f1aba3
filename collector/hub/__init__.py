"""The county/city hub: receives enterprises' signed evidence over MQTT, checks each record against the
enrolled key and what it already holds, keeps them in PostgreSQL, answers with signed receipts and writes the
monthly bulletin. It imports the evidence verification (`collector.evidence`), never the engine: a hub machine
runs no devices. Operator guide: docs/hub.md."""
