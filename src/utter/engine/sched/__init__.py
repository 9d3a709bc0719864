"""Scheduling: the decode loop over a batch of requests (``runner``), requests waiting for text
(``parking``, ``textfeed``) and continuous batching with streaming audio for many callers
(``batcher``)."""
