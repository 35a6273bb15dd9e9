"""State kept beside the queue: results of recent jobs (and, later, shared tokens and locks)."""
