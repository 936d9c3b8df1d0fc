"""Ray Tune glue: campaigns over score-level and training parameters."""
