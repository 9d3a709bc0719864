"""Speaking: requests to audio (one, a long text in parts, realtime replies) and jobs."""
