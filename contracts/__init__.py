"""What every part of shelfq shares: event models, topics, settings, errors, the dead-letter
path and the Kafka plumbing built on them. Imports flow into here, never out of it."""
