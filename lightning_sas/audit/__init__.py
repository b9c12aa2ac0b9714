"""One audit as plain data: run the methods on the probes (run.py), shard and gather across ranks,
estimate the cost, and decide the verdict (verdict.py: the only place an alert is decided).
"""
