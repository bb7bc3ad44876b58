"""The shopper simulator: a catalog and shoppers whose choices have long-term consequences, as a Gymnasium environment and as a frontend driving the real topics."""
