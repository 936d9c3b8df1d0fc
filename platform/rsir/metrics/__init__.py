"""Retrieval metrics (R@K, mR, mAP) and caption metrics with the papers protocols."""
