"""`bench/pipeline`: the whole path (publish, consume, Salesforce, reply, ack) measured for
sfworker, a minimal baseline and the usual Python stacks. See bench/README.md."""
