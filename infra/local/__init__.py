"""``tollgate up``: the template on one machine (broker, scheduler, one process per function)."""
