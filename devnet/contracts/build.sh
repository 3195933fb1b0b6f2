#!/usr/bin/env bash
# Regenerates TestToken.json (abi + bytecode) from TestToken.sol with the pinned solc in chaintools/
# (npm solc 0.8.37; `make chaintools` installs it). Target EVM "paris" (no PUSH0) so the same bytecode runs
# on anvil and on the embedded py-evm chain.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
solc="$root/chaintools/node_modules/solc"
cd "$here"
node - "$solc" <<'JS'
const fs = require("fs");
const solc = require(process.argv[2]);
const input = {
  language: "Solidity",
  sources: { "TestToken.sol": { content: fs.readFileSync("TestToken.sol", "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "paris",
    outputSelection: { "*": { TestToken: ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) { console.error(errors.map((e) => e.formattedMessage).join("\n")); process.exit(1); }
const contract = output.contracts["TestToken.sol"].TestToken;
const version = solc.version();
const artifact = { contractName: "TestToken", compiler: `solc ${version}`, evmVersion: "paris",
                   abi: contract.abi, bytecode: "0x" + contract.evm.bytecode.object };
fs.writeFileSync("TestToken.json", JSON.stringify(artifact, null, 2) + "\n");
console.log(`TestToken.json: ${contract.evm.bytecode.object.length / 2} bytes of bytecode`);
JS
