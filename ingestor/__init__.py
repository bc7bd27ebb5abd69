"""The Falcon Event Streams client and the ingest loop that writes every event into Kafka."""
