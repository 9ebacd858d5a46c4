"""``python -m peft_hybrid.hub_server``: run the Hub-compatible server."""

from peft_hybrid.hub_server.server import main

main()
