"""The base of the service: errors, configuration, money types and assets, limits, key encryption, and every
actor message and typed reply. It imports nothing of ours, so every other package may import it."""
