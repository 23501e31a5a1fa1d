"""The configuration: its schema (schema.yaml, every key documented) and the settings ids that name outputs."""
