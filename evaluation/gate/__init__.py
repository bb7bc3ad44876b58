"""The model gate (``shelfq gate``): a new model version serves only once it has proved itself
off-policy on the most recent logged traffic, and a serving version that earns less live than
its estimate said is rolled back. See docs/agents.md, "Model lifecycle"."""
