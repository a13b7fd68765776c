"""Tests for kemi.policy: the decision procedure, the database and the reload cache."""
