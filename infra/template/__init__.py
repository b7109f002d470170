"""``template.yaml``: its schema and field types, loading with line numbers, cross-checks."""
