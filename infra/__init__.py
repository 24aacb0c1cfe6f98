"""Ground floor of lakeloop: settings, the table registry, the local platform's services.

Every other package imports from here; nothing here imports from the packages above it.
"""
