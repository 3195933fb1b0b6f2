"""Custodial Ethereum wallet service: configuration, domain types, lifecycle and the CLI."""
