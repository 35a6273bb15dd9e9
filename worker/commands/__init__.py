"""What people type: the `sfworker` CLI (`cli`), the demo, `submit`, `dlq`, `accounts check` and
`accounts authorize` (`accounts/`), and the tables they print (`render`)."""
