"""User feedback: the v1 event schema, the qa_feedback loader, the producer, and the exactly-once
Kafka -> Delta ingestor (bronze). Nothing runs at import time; import the submodules you need."""
