"""Data: the shard schema, converters from public datasets, the demo world, transforms."""
