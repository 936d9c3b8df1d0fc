"""Ray Serve glue: the retrieval endpoint."""
