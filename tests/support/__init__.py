"""What the tests share, as a library: helpers and test doubles that test modules and conftest
files import (a test module never imports another test module: tests/unit/test_test_layout.py).

- `accounts`: accounts files on the simulator, RSA keys for jwt-bearer
- `settings`: Settings of a test's own topology, the environment of a `sfworker run` process
- `workers`: `sfworker run` processes (`WorkerProcess`, `spawning`)
- `waiting`, `ports`: polling with a deadline, a free local port
- `job_client`, `queues`, `raw_amqp`, `broker_users`: the broker side
- `metrics`: the one reader of Prometheus metrics
- `redis_server`, `tcp_proxy`, `eavesdropper`, `otlp_receiver`: servers a test runs of its own;
  `tls_broker`: a RabbitMQ node of its own that takes client certificates (EXTERNAL)
- `image_spec`: what the production image is
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
"""The project's checkout."""
