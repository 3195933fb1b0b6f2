"""The top of the service: the actor system's lifecycle, `wallet serve`, the CLI, the demo, the audit and
provisioning. Nothing imports it."""
