"""HTTP plumbing: middleware, connection limits, the error shape and offline docs."""
