"""A small Hub-compatible server for air-gapped sites and tests (extra ``hub-server``).

Run it with ``python -m peft_hybrid.hub_server --port 8080 --data-dir hub-data --user alice:SECRET``.
"""
