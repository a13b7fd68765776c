"""referee inside Kamailio: sans-IO SIP pieces, policy, transfer state, and the KSR glue."""
