"""`lakeloop` sub-commands, one module per domain; each exposes ``register(app)``."""
