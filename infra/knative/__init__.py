"""The template on Knative: manifests per cluster, the table definition, the ``kn`` deploy plan."""
