"""The ``shelfq`` command and the operations around the pipeline: the embedded broker, topic
administration and the demo. It composes streams, learner and agents; none of them imports it."""

__version__ = "0.1.0"
