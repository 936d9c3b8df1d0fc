"""Standing queries that raise alerts when new imagery matches them (find, then monitor).

``store``: monitors, alerts and webhook deliveries in SQL (SQLite by default); scoring is
pure numpy in :mod:`rsir.retrieval.monitors`; ``job`` scores an archive's new rows on Ray.
"""
