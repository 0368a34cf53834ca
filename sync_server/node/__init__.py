"""One running node: configuration, runtime, logging, the CLI and the composition root (app)."""
