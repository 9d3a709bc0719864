"""Clients of a running service: ``utter client`` and its realtime pipe."""
