"""State kept beside the queue, in this process or for the fleet in Redis: the result store
(results, job-id bindings, insert markers), slot leases, the usage board and the token boards."""
