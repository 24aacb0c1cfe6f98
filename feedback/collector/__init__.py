"""The feedback front door: an HTTP collector that puts app feedback on the exactly-once path.

API keys are ``infra.api_keys`` (shared with the scoring service); ``events`` (request body -> per-event
verdicts with the ingestor's own validation), ``publisher`` (Kafka, acks=all, idempotent, readiness) and
``app`` (the FastAPI app and ``run``). The client apps use is ``feedback.client``.
"""
