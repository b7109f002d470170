"""Who may talk to whom: OIDC sender identity and event policies (as Knative Eventing's), the
token files workloads present, and the keys of inference capabilities."""
