"""The benchmark suite behind `scripts/bench`: one module per measurement.

Not part of the installed product: it drives the real `orchestrator` processes on the
real MariaDB + Redis at 127.0.0.1, and the peers (Celery, Dramatiq) on the same Redis.
"""
