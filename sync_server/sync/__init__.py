"""The sync core: the y-websocket protocol, connections, rooms and their hooks, the websocket endpoint.
Knows no database, Redis, tracking or Quart."""
