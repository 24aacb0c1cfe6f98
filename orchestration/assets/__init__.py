"""Dagster assets grouped by domain; each domain package exposes ``defs``."""
