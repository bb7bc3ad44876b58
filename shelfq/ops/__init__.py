"""Operations on the Kafka side: the embedded broker, topics, ports, a component's /metrics, the
files shelfq ships (``deploy/``)."""
