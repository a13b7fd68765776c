"""Sans-IO readers for the SIP pieces a transfer carries (no KSR, no sockets)."""
