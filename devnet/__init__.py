"""A real Ethereum node for tests and benchmarks: anvil processes from the pinned npm package, raw RPC, a
test ERC-20, fault injectors. Never imported by the product."""
