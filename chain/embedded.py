"""An in-process Ethereum chain for the embedded mode (`wallet demo`) and for tests: eth-tester's py-evm
backend behind a small JSON-RPC-over-HTTP server on 127.0.0.1, so the block watcher talks to it exactly as
to a real node through WALLET_RPC_URLS.

Blocks are sealed on a timer (or by `mine()`), not per transaction: a sent transaction is applied to the
pending block, so one sender may send several in a row with consecutive nonces, and it is mined with the
next block, as on a real network. One lock serialises every access to the EVM (eth-tester is not
thread-safe).

Answers on the wire follow the Ethereum JSON-RPC conventions: quantities as 0x-hex, data as 0x-hex,
camelCase keys, `null` for a block, transaction or receipt that does not exist (yet).
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from typing import Any, Callable

from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import BlockNotFound, TransactionFailed, TransactionNotFound
from eth_utils.exceptions import ValidationError as EvmValidationError
from eth_tester.exceptions import ValidationError as TesterValidationError

from core.limits import FEE_HISTORY_BLOCKS_MAX

log = logging.getLogger(__name__)

BLOCK_TAGS = frozenset({"latest", "earliest", "pending", "safe", "finalized"})
PRIORITY_FEE_WEI = 10**9  # the tip eth_gasPrice adds to the base fee, and eth_maxPriorityFeePerGas answers
REQUEST_BYTES_MAX = 4 * 2**20
BATCH_MAX = 1000
TRANSFER_GAS = 21_000

# JSON-RPC 2.0 error codes (and the -32000 range nodes use for "the server refused this").
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603)
SERVER_REFUSED = -32000
EXECUTION_REVERTED = 3  # eth_call / eth_estimateGas of a call that reverts, as geth and anvil answer

# Request keys of a transaction object (eth_call, eth_estimateGas) -> eth-tester's names.
_TX_REQUEST_KEYS = {"gasPrice": "gas_price", "maxFeePerGas": "max_fee_per_gas", "input": "data",
                    "maxPriorityFeePerGas": "max_priority_fee_per_gas", "accessList": "access_list",
                    "chainId": "chain_id"}
_TX_REQUEST_QUANTITIES = {"gas", "gas_price", "value", "nonce", "max_fee_per_gas", "max_priority_fee_per_gas",
                          "chain_id"}


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EmbeddedChain:
    """A private EVM chain with pre-funded dev accounts, mining a block every `block_interval_s` seconds
    (0 = only when `mine()` is called)."""

    def __init__(self, block_interval_s: float = 2.0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.block_interval_s = block_interval_s
        self._bind = (host, port)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._backend: PyEVMBackend | None = None
        self._tester: EthereumTester | None = None
        self._http: http.server.ThreadingHTTPServer | None = None
        self._methods: dict[str, Callable[..., Any]] = {
            "web3_clientVersion": lambda: "wallet-embedded-chain/eth-tester",
            "net_version": lambda: str(self.chain_id),
            "eth_chainId": lambda: hex(self.chain_id),
            "eth_syncing": lambda: False,
            "eth_blockNumber": self._block_number,
            "eth_getBlockByNumber": self._get_block_by_number,
            "eth_getBlockByHash": self._get_block_by_hash,
            "eth_getLogs": self._get_logs,
            "eth_getTransactionByHash": self._get_transaction,
            "eth_getTransactionReceipt": self._get_receipt,
            "eth_sendRawTransaction": self._send_raw_transaction,
            "eth_getBalance": lambda address, tag="latest": hex(self._t.get_balance(address, _block_id(tag))),
            "eth_getTransactionCount": self._get_transaction_count,
            "eth_getCode": lambda address, tag="latest": self._t.get_code(address, _block_id(tag)),
            "eth_gasPrice": lambda: hex(self._base_fee() + PRIORITY_FEE_WEI),
            "eth_maxPriorityFeePerGas": lambda: hex(PRIORITY_FEE_WEI),
            "eth_feeHistory": self._fee_history,
            "eth_accounts": lambda: [],  # the dev key is this process's, never the node's to sign with
            "eth_estimateGas": lambda tx, tag="latest": hex(self._t.estimate_gas(self._tx_request(tx),
                                                                                  _block_id(tag))),
            "eth_call": lambda tx, tag="latest": self._t.call(self._tx_request(tx), _block_id(tag)),
        }

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> EmbeddedChain:
        self._backend = PyEVMBackend()
        # Raw transactions go straight to the backend's pending block (see _send_raw_transaction), so the
        # tester's own pool, which validates each transaction against the last mined state, stays unused.
        self._tester = EthereumTester(backend=self._backend)
        self._http = http.server.ThreadingHTTPServer(self._bind, _handler_for(self))
        self._http.daemon_threads = True
        self._spawn(self._http.serve_forever, "chain-rpc")
        if self.block_interval_s > 0:
            self._spawn(self._mine_on_timer, "chain-miner")
        log.info("embedded chain started", extra={"url": self.url, "chain_id": self.chain_id,
                                                   "block_interval_s": self.block_interval_s})
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        log.info("embedded chain stopped")

    def __enter__(self) -> EmbeddedChain:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- what the demo and tests use directly --------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._http is not None, "start() the chain first"
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def chain_id(self) -> int:
        return self._backend.chain.chain_id

    @property
    def dev_address(self) -> str:
        """A pre-funded account (1,000,000 ETH at genesis) whose key only this process knows."""
        return self._tester.get_accounts()[0]

    def mine(self, blocks: int = 1) -> int:
        """Seal `blocks` blocks with the pending transactions; returns the new head height."""
        with self._lock:
            self._t.mine_blocks(blocks)
            return self._t.get_block_by_number("latest")["number"]

    def send_transaction(self, to: str | None, value_wei: int = 0, data: bytes = b"",
                         gas: int = TRANSFER_GAS) -> str:
        """Sign a transaction from the dev account (`to=None` creates a contract) and send it through
        eth_sendRawTransaction, as a wallet would; it lands in the next block. Returns its hash."""
        with self._lock:
            tx = {"type": 2, "chainId": self.chain_id, "nonce": self._t.get_nonce(self.dev_address, "pending"),
                  "value": value_wei, "data": data, "gas": gas, "maxPriorityFeePerGas": PRIORITY_FEE_WEI,
                  "maxFeePerGas": 2 * self._base_fee() + PRIORITY_FEE_WEI}
            if to is not None:
                tx["to"] = to
            signed = Account.sign_transaction(tx, self._dev_key())
            return self._send_raw_transaction("0x" + signed.raw_transaction.hex())

    def call(self, method: str, params: list[Any] | tuple[Any, ...] = ()) -> Any:
        """One JSON-RPC call in process (the HTTP server uses the same path). Raises RpcError."""
        handler = self._methods.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"the method {method} does not exist/is not available")
        if not isinstance(params, (list, tuple)):
            raise RpcError(INVALID_PARAMS, "params must be an array")
        try:
            with self._lock:
                return handler(*params)
        except RpcError:
            raise
        except TransactionFailed as exc:
            raise RpcError(EXECUTION_REVERTED, f"execution reverted: {exc}") from None
        except EvmValidationError as exc:  # the EVM refuses the call itself, e.g. a sender without gas money
            raise RpcError(SERVER_REFUSED, f"call refused: {exc}") from None
        except (TypeError, ValueError, TesterValidationError) as exc:
            raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None

    # -- JSON-RPC methods (called with the lock held) --------------------------------------------------
    @property
    def _t(self) -> EthereumTester:
        assert self._tester is not None, "start() the chain first"
        return self._tester

    def _dev_key(self) -> bytes:
        return self._backend.account_keys[0].to_bytes()

    def _base_fee(self) -> int:
        return self._t.get_block_by_number("pending")["base_fee_per_gas"]

    def _block_number(self) -> str:
        return hex(self._t.get_block_by_number("latest")["number"])

    def _get_block_by_number(self, tag: str, full: bool = False) -> dict | None:
        try:
            return _block(self._t.get_block_by_number(_block_id(tag), full_transactions=bool(full)))
        except BlockNotFound:
            return None

    def _get_block_by_hash(self, block_hash: str, full: bool = False) -> dict | None:
        try:
            return _block(self._t.get_block_by_hash(block_hash, full_transactions=bool(full)))
        except BlockNotFound:
            return None

    def _get_logs(self, query: dict) -> list[dict]:
        if not isinstance(query, dict):
            raise RpcError(INVALID_PARAMS, "eth_getLogs takes a filter object")
        from_block, to_block = query.get("fromBlock", "latest"), query.get("toBlock", "latest")
        if query.get("blockHash"):
            block = self._get_block_by_hash(query["blockHash"])
            if block is None:
                raise RpcError(SERVER_REFUSED, f"unknown block {query['blockHash']}")
            from_block = to_block = block["number"]
        address = query.get("address")
        if isinstance(address, list) and len(address) == 1:
            address = address[0]  # eth-tester matches one address or a tuple of several
        elif isinstance(address, list):
            address = tuple(address)
        topics = query.get("topics")
        if topics is not None:
            topics = [tuple(t) if isinstance(t, list) else t for t in topics]
        logs = self._t.get_logs(from_block=_block_id(from_block), to_block=_block_id(to_block),
                                address=address, topics=topics)
        return [_log(entry) for entry in logs]

    def _get_transaction(self, tx_hash: str) -> dict | None:
        try:
            return _transaction(self._t.get_transaction_by_hash(tx_hash))
        except TransactionNotFound:
            return None

    def _get_receipt(self, tx_hash: str) -> dict | None:
        try:
            receipt = self._t.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None
        if receipt.get("block_number") is None:
            return None  # still pending: real nodes answer null until the transaction is mined
        return _receipt(receipt)

    def _send_raw_transaction(self, raw: str) -> str:
        try:
            tx_hash = self._backend.send_raw_transaction(bytes.fromhex(raw.removeprefix("0x")))
        except Exception as exc:  # noqa: BLE001 - the EVM's reasons vary; the node answers "refused"
            raise RpcError(SERVER_REFUSED, f"transaction rejected: {exc}") from None
        return "0x" + tx_hash.hex()

    def _get_transaction_count(self, address: str, tag: str = "latest") -> str:
        return hex(self._t.get_nonce(address, _block_id(tag)))

    def _fee_history(self, block_count: Any, newest: Any = "latest", percentiles: Any = None) -> dict:
        """eth_feeHistory as geth answers it: base fees of the window plus the next block's, gas used ratios, and
        per block the tips at the given percentiles of its gas used (transactions sorted by tip)."""
        count = _count_param(block_count)
        if percentiles is not None and (
                not isinstance(percentiles, list)
                or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 100
                           for p in percentiles)
                or percentiles != sorted(percentiles)):
            raise RpcError(INVALID_PARAMS, "reward percentiles must be increasing numbers in [0, 100]")
        tag = _block_id(newest)
        latest = self._t.get_block_by_number("latest")["number"]
        newest_number = latest if tag in ("latest", "pending") else tag
        if not isinstance(newest_number, int) or newest_number > latest:
            raise RpcError(INVALID_PARAMS, f"block {newest!r} is beyond the head {latest}")
        oldest = max(0, newest_number - min(count, FEE_HISTORY_BLOCKS_MAX) + 1)
        blocks = [self._t.get_block_by_number(n) for n in range(oldest, newest_number + 1)]
        following = self._t.get_block_by_number(newest_number + 1 if newest_number < latest else "pending")
        answer: dict[str, Any] = {
            "oldestBlock": hex(oldest),
            "baseFeePerGas": [hex(b["base_fee_per_gas"]) for b in blocks] + [hex(following["base_fee_per_gas"])],
            "gasUsedRatio": [b["gas_used"] / b["gas_limit"] for b in blocks],
        }
        if percentiles is not None:
            answer["reward"] = [[hex(tip) for tip in self._block_tips(b, percentiles)] for b in blocks]
        return answer

    def _block_tips(self, block: dict, percentiles: list) -> list[int]:
        """geth's rule: sort the block's transactions by tip; a percentile's tip is that of the transaction at
        which the gas used, summed in that order, reaches the percentile of the block's gas used."""
        if not block["transactions"]:
            return [0] * len(percentiles)
        receipts = [self._t.get_transaction_receipt(tx_hash) for tx_hash in block["transactions"]]
        sorted_txs = sorted((r["effective_gas_price"] - block["base_fee_per_gas"], r["gas_used"]) for r in receipts)
        tips, index, gas_sum = [], 0, sorted_txs[0][1]
        for percentile in percentiles:
            threshold = int(block["gas_used"] * percentile / 100)
            while gas_sum < threshold and index < len(sorted_txs) - 1:
                index += 1
                gas_sum += sorted_txs[index][1]
            tips.append(sorted_txs[index][0])
        return tips

    def _tx_request(self, tx: dict) -> dict:
        """eth_call / eth_estimateGas transaction object -> eth-tester's shape."""
        if not isinstance(tx, dict):
            raise RpcError(INVALID_PARAMS, "expected a transaction object")
        out = {}
        for key, value in tx.items():
            name = _TX_REQUEST_KEYS.get(key, key)
            out[name] = int(value, 16) if name in _TX_REQUEST_QUANTITIES and isinstance(value, str) else value
        out.pop("type", None)  # eth-tester infers the type from the fee fields
        # Nodes run a call without `from` for free; py-evm charges gas, so the funded dev account pays.
        out.setdefault("from", self.dev_address)
        return out

    def _mine_on_timer(self) -> None:
        while not self._stopping.wait(self.block_interval_s):
            try:
                self.mine()
            except Exception:  # noqa: BLE001 - a bad pooled transaction must not stop block production
                log.exception("embedded chain failed to mine a block")


# -- request and answer shapes ---------------------------------------------------------------------------

def _block_id(tag: Any) -> int | str:
    if isinstance(tag, int) and not isinstance(tag, bool):
        return tag
    if isinstance(tag, str) and tag in BLOCK_TAGS:
        return "latest" if tag in ("safe", "finalized") else tag
    if isinstance(tag, str) and tag.startswith("0x"):
        return int(tag, 16)
    raise RpcError(INVALID_PARAMS, f"invalid block number or tag {tag!r}")


def _count_param(value: Any) -> int:
    """A block count: an int or a 0x-hex quantity, 1 or more."""
    if isinstance(value, str) and value.startswith("0x"):
        value = int(value, 16)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RpcError(INVALID_PARAMS, f"block count must be a positive quantity, got {value!r}")
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _wire(value: Any) -> Any:
    """Python values from eth-tester -> JSON-RPC wire values."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {_camel(k): _wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wire(v) for v in value]
    raise TypeError(f"cannot put {type(value).__name__} on the wire")


def _transaction(tx: dict) -> dict:
    tx = dict(tx)
    tx["input"] = tx.pop("data", "0x")
    if tx.get("to") == "":
        tx["to"] = None  # contract creation
    return _wire(tx)


def _block(block: dict) -> dict:
    block = dict(block)
    block["miner"] = block.pop("coinbase")
    block["logs_bloom"] = "0x" + int(block["logs_bloom"]).to_bytes(256, "big").hex()
    block["transactions"] = [_transaction(tx) if isinstance(tx, dict) else tx for tx in block["transactions"]]
    return _wire(block)


def _log(entry: dict) -> dict:
    entry = {k: v for k, v in entry.items() if k != "type"}  # eth-tester's "mined" marker
    entry["removed"] = False
    return _wire(entry)


def _receipt(receipt: dict) -> dict:
    receipt = {k: v for k, v in receipt.items() if k != "state_root"}  # post-Byzantium receipts carry status
    receipt["logs"] = [_log(entry) for entry in receipt.get("logs", ())]
    return _wire(receipt)


# -- the HTTP side -----------------------------------------------------------------------------------------

def _answer(chain: EmbeddedChain, request: Any) -> dict | None:
    """One JSON-RPC request object -> its response (None for a notification)."""
    if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or "method" not in request:
        return {"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": "invalid request"}}
    request_id = request.get("id")
    try:
        result = chain.call(request["method"], request.get("params", []))
    except RpcError as exc:
        response = {"jsonrpc": "2.0", "id": request_id, "error": {"code": exc.code, "message": exc.message}}
    except Exception as exc:  # noqa: BLE001 - a node answers an internal error instead of dropping the request
        log.exception("embedded chain failed a request", extra={"method": request.get("method")})
        response = {"jsonrpc": "2.0", "id": request_id, "error": {"code": INTERNAL_ERROR, "message": str(exc)}}
    else:
        response = {"jsonrpc": "2.0", "id": request_id, "result": result}
    return response if "id" in request else None


def _handler_for(chain: EmbeddedChain) -> type[http.server.BaseHTTPRequestHandler]:
    class JsonRpcHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as node clients expect

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            if length > REQUEST_BYTES_MAX:
                self._reply(413, {"jsonrpc": "2.0", "id": None,
                                  "error": {"code": INVALID_REQUEST, "message": "request too large"}})
                return
            try:
                request = json.loads(self.rfile.read(length))
            except ValueError:
                self._reply(200, {"jsonrpc": "2.0", "id": None,
                                  "error": {"code": PARSE_ERROR, "message": "parse error"}})
                return
            self._reply(200, self._batch(request) if isinstance(request, list) else _answer(chain, request))

        def _batch(self, requests: list) -> Any:
            if not requests or len(requests) > BATCH_MAX:
                return {"jsonrpc": "2.0", "id": None,
                        "error": {"code": INVALID_REQUEST, "message": f"a batch holds 1 to {BATCH_MAX} requests"}}
            return [r for r in (_answer(chain, request) for request in requests) if r is not None]

        def _reply(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass  # one line per request would drown the service's own logs

    return JsonRpcHandler
