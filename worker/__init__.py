"""sfworker: runs contact-center Salesforce blocks from RabbitMQ against the Salesforce REST API."""

__version__ = "0.1.0"
