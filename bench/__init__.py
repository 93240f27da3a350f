"""`make bench`: qlite against raw boto3 and its peers (Huey, RQ, Celery) on one box.

Run it as ``python -m bench`` from the repository root (``make bench`` does, after installing
the ``bench`` extra and redis-server). See docs/performance.md for what it measures.
"""
