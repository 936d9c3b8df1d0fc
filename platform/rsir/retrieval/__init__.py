"""Retrieval: embedding archives, exact / approximate top-k, WEICOM composed scoring, MR rerank."""
