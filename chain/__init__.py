"""Chain access: JSON-RPC to one or more Ethereum nodes (batched reads, failover between a primary and hot
standbys), typed chain values, and ERC-20 log decoding. The block watcher and the signer read the chain only
through this package."""
