"""REST blueprints; handlers stay thin and call the services in sync_server."""
