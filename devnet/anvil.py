"""Test helpers for a real chain: anvil processes, raw RPC, ETH and ERC-20 transactions, and two fault
injectors that sit between the client and a node.

- `Anvil`: starts anvil (pinned npm @foundry-rs/anvil, see chaintools/) on a free 127.0.0.1 port, waits until
  it answers (polling), and offers the test RPC calls (mine, snapshot/revert, reorg, automine).
- `send_eth`, `deploy_token`, `token_mint`, `token_transfer`, `token_balance`, `wait_receipt`: transactions
  signed locally with anvil's deterministic dev keys (eth_account), so they work on any node.
- `TcpProxy`: a TCP forwarder in front of a node; `kill()` drops it (listener and open connections) without
  touching the node, `restore()` brings it back on the same port, `retarget()` points it at another node.
- `BadNode`: an HTTP JSON-RPC server that passes calls to an upstream node (or answers eth_chainId and
  eth_blockNumber itself) and injects faults per method: JSON-RPC errors, null results, patched fields,
  garbage bodies, HTTP errors, delays, dropped connections. It counts every call it receives.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Self

import requests
from eth_abi import encode
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from core.ports import free_port
from devnet.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = Path(__file__).resolve().parent / "contracts"

# anvil's default mnemonic ("test test ... junk") gives these keys; test_client checks them against the node.
DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
)
DEV_ADDRESSES = tuple(Account.from_key(k).address for k in DEV_KEYS)

_START_TIMEOUT_S = 15.0
_RECEIPT_TIMEOUT_S = 15.0
_POLL_S = 0.02


def anvil_binary() -> str:
    """The native anvil binary shipped by the npm package (the npm bin is a node wrapper that forks it)."""
    override = os.environ.get("WALLET_ANVIL")
    if override:
        return override
    native = sorted(glob.glob(str(ROOT / "chaintools/node_modules/@foundry-rs/anvil-*/bin/anvil")))
    if native:
        return native[0]
    wrapper = ROOT / "chaintools/node_modules/.bin/anvil"
    if wrapper.exists():
        return str(wrapper)
    raise RuntimeError("anvil is not installed: run `make chaintools`")


class RpcError(Exception):
    def __init__(self, error: Any) -> None:
        super().__init__(f"JSON-RPC error: {error}")
        self.error = error


_http = threading.local()


def rpc(url: str, method: str, params: list | None = None, timeout: float = 10.0) -> Any:
    """One JSON-RPC call for test setup; raises RpcError on an error reply."""
    session = getattr(_http, "session", None)
    if session is None:
        session = _http.session = requests.Session()
    reply = session.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []},
                         timeout=timeout).json()
    if reply.get("error") is not None:
        raise RpcError(reply["error"])
    return reply["result"]


class _LocalServer:
    """A server of these helpers on 127.0.0.1:`port`, used as a context manager: start(), then close()."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- anvil -----------------------------------------------------------------------------------------------

class Anvil(_LocalServer):
    """One anvil process. Automine by default; `block_time` mines on a timer; `no_mining` only mines when
    asked (mine()). `state=True` keeps the chain in a file across stop()/restart() (a graceful stop dumps it).
    Use as a context manager or call stop()/kill(); the process never outlives the test."""

    def __init__(self, *, chain_id: int = 31337, block_time: float | None = None, no_mining: bool = False,
                 accounts: int = 10, balance_eth: int = 10000, port: int | None = None, state: bool = False,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.chain_id = chain_id
        self.block_time = block_time
        self.no_mining = no_mining
        self.accounts = accounts
        self.balance_eth = balance_eth
        self.port = port or free_port()
        self.extra_args = extra_args
        self._dir = tempfile.TemporaryDirectory(prefix="anvil-")
        self.state_path = Path(self._dir.name) / "state.json" if state else None
        self.log_path = Path(self._dir.name) / "anvil.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Anvil:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("anvil already running")
        args = [anvil_binary(), "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(self.chain_id),
                "--accounts", str(self.accounts), "--balance", str(self.balance_eth)]
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        if self.no_mining:
            args.append("--no-mining")
        if self.state_path is not None:
            args += ["--state", str(self.state_path)]
        args += list(self.extra_args)
        with open(self.log_path, "ab") as out:
            # own session: stop/kill reach the whole group even if a wrapper forked the real binary
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"anvil exited with {self.process.returncode}: {self.log_tail()}")
            return int(rpc(self.url, "eth_chainId", timeout=1.0), 16) == self.chain_id

        try:
            wait_until(answers, _START_TIMEOUT_S, f"anvil to answer on {self.url}", interval_s=_POLL_S,
                       ignore=(requests.RequestException, ValueError), detail=self.log_tail)
        except AssertionError:
            self.kill()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): anvil dumps its state file if it has one."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Hard stop (SIGKILL): the node vanishes mid-whatever; state since the last dump is lost."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self) -> Anvil:
        """Stops gracefully and starts again on the same port (with the same chain if `state=True`)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.kill()
        self._dir.cleanup()

    def _signal(self, sig: int, timeout: float) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- test RPC ---

    def rpc(self, method: str, params: list | None = None) -> Any:
        return rpc(self.url, method, params)

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def block(self, number: int | str = "latest", full: bool = False) -> dict:
        tag = hex(number) if isinstance(number, int) else number
        return self.rpc("eth_getBlockByNumber", [tag, full])

    def mine(self, blocks: int = 1) -> int:
        """Mines `blocks` blocks now; returns the new head."""
        self.rpc("anvil_mine", [hex(blocks)])
        return self.head()

    def set_automine(self, enabled: bool) -> None:
        self.rpc("evm_setAutomine", [enabled])

    def snapshot(self) -> str:
        return self.rpc("evm_snapshot")

    def revert(self, snapshot_id: str) -> bool:
        return self.rpc("evm_revert", [snapshot_id])

    def reorg(self, depth: int, tx_block_pairs: Sequence[tuple[str, int]] = ()) -> int:
        """Replaces the last `depth` blocks with new ones (anvil_reorg). `tx_block_pairs` are (signed raw tx
        hex, offset from the fork point) to include in the new branch. Returns the new head."""
        self.rpc("anvil_reorg", [depth, [[raw, offset] for raw, offset in tx_block_pairs]])
        return self.head()


# --- transactions signed with dev keys ---------------------------------------------------------------------

def _artifact() -> dict:
    return json.loads((CONTRACTS / "TestToken.json").read_text())


def sign_tx(rpc_url: str, private_key: str, *, to: str | None, value: int = 0, data: str = "0x",
            gas: int | None = None, nonce: int | None = None) -> tuple[str, str]:
    """Signs a legacy transaction for the node's chain. Returns (raw tx hex, tx hash). The nonce defaults to
    the sender's pending nonce; gas to the node's estimate plus a margin."""
    sender = Account.from_key(private_key).address
    chain_id = int(rpc(rpc_url, "eth_chainId"), 16)
    if nonce is None:
        nonce = int(rpc(rpc_url, "eth_getTransactionCount", [sender, "pending"]), 16)
    call = {"from": sender, "value": hex(value), "data": data}
    if to is not None:
        call["to"] = to
    if gas is None:
        gas = int(rpc(rpc_url, "eth_estimateGas", [call]), 16) * 12 // 10 + 10_000
    # From the base fee, not eth_gasPrice: anvil suggests from recent prices, so paying twice its suggestion
    # transaction after transaction doubles the price each time (after ~30 a dev account cannot pay any more).
    base_fee = int(rpc(rpc_url, "eth_getBlockByNumber", ["latest", False]).get("baseFeePerGas") or "0x0", 16)
    gas_price = 2 * base_fee + 10**9
    tx = {"chainId": chain_id, "nonce": nonce, "gas": gas, "gasPrice": gas_price, "value": value, "data": data}
    if to is not None:
        tx["to"] = to_checksum_address(to)
    signed = Account.sign_transaction(tx, private_key)
    return "0x" + signed.raw_transaction.hex(), "0x" + signed.hash.hex()


def send_signed(rpc_url: str, private_key: str, *, wait: bool = True, **tx: Any) -> str:
    raw, tx_hash = sign_tx(rpc_url, private_key, **tx)
    rpc(rpc_url, "eth_sendRawTransaction", [raw])
    if wait:
        wait_receipt(rpc_url, tx_hash)
    return tx_hash


def wait_receipt(rpc_url: str, tx_hash: str, timeout: float = _RECEIPT_TIMEOUT_S) -> dict:
    """Polls until the transaction is mined (on a --no-mining node, mine meanwhile). Fails if it reverted."""
    receipt = wait_until(lambda: rpc(rpc_url, "eth_getTransactionReceipt", [tx_hash]), timeout,
                         f"transaction {tx_hash} to be mined", interval_s=_POLL_S)
    if receipt["status"] != "0x1":
        raise AssertionError(f"transaction {tx_hash} reverted")
    return receipt


def send_eth(rpc_url: str, from_key: str, to: str, amount_wei: int, *, wait: bool = True) -> str:
    """Sends ETH from a dev key; returns the tx hash (after it is mined if `wait`)."""
    return send_signed(rpc_url, from_key, to=to, value=amount_wei, gas=21_000, wait=wait)


def deploy_token(rpc_url: str, deployer_private_key: str, name: str = "Test Token", symbol: str = "TT",
                 decimals: int = 18) -> str:
    """Deploys devnet/contracts/TestToken and returns its checksummed address (waits for the receipt)."""
    code = _artifact()["bytecode"] + encode(["string", "string", "uint8"], [name, symbol, decimals]).hex()
    raw, tx_hash = sign_tx(rpc_url, deployer_private_key, to=None, data=code)
    rpc(rpc_url, "eth_sendRawTransaction", [raw])
    return to_checksum_address(wait_receipt(rpc_url, tx_hash)["contractAddress"])


def _call_data(signature: str, types: list[str], args: list[Any]) -> str:
    return "0x" + function_signature_to_4byte_selector(signature).hex() + encode(types, args).hex()


def token_mint(rpc_url: str, token: str, from_key: str, to: str, amount: int, *, wait: bool = True) -> str:
    data = _call_data("mint(address,uint256)", ["address", "uint256"], [to, amount])
    return send_signed(rpc_url, from_key, to=token, data=data, wait=wait)


def token_transfer(rpc_url: str, token: str, from_key: str, to: str, amount: int, *, wait: bool = True) -> str:
    data = _call_data("transfer(address,uint256)", ["address", "uint256"], [to, amount])
    return send_signed(rpc_url, from_key, to=token, data=data, wait=wait)


def token_balance(rpc_url: str, token: str, owner: str) -> int:
    data = _call_data("balanceOf(address)", ["address"], [owner])
    return int(rpc(rpc_url, "eth_call", [{"to": token, "data": data}, "latest"]), 16)


def eth_balance(rpc_url: str, owner: str) -> int:
    return int(rpc(rpc_url, "eth_getBalance", [owner, "latest"]), 16)


# --- TCP proxy ---------------------------------------------------------------------------------------------

class TcpProxy(_LocalServer):
    """Forwards 127.0.0.1:port to a target port. kill() closes the listener and every open connection (the
    node behind stays up); restore() listens again on the same port; retarget() switches the node behind."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                                        name=f"tcp-proxy-{self.port}")
        self._thread.start()
        return self

    restore = start

    def kill(self) -> None:
        """Stops listening and resets every open connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.drop_connections()

    close = kill

    def retarget(self, target_port: int) -> None:
        """New connections go to `target_port`; open ones are dropped so keep-alive clients reconnect."""
        self.target_port = target_port
        self.drop_connections()

    def drop_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def _accept_loop(self, listener: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not selector.select(timeout=0.05):
                    continue
                try:
                    client, _ = listener.accept()
                except OSError:
                    break
                self._connect(client)
        listener.close()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            upstream.settimeout(None)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._sockets.update((client, upstream))
            self.connections += 1
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        # RST rather than FIN: a client mid-request sees the connection die, as when a node host vanishes
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# --- misbehaving JSON-RPC node -----------------------------------------------------------------------------

@dataclass
class Fault:
    """What BadNode does to a call. kind: 'error' (JSON-RPC error `code`/`message`), 'null' (result null),
    'patch' (set `fields` in the result object, or in each object of a list result), 'result' (replace the
    result with `value`), 'garbage' (a non-JSON HTTP 200 body), 'http' (HTTP `status` with a plain body),
    'delay' (wait `seconds`, then answer normally), 'drop' (close the connection without answering), 'swallow'
    (pass the call to the upstream node, so it takes effect, then close the connection without answering).
    `times` limits how many calls it hits (None: every call)."""

    kind: str
    code: int = -32000
    message: str = "injected failure"
    fields: dict = field(default_factory=dict)
    value: Any = None
    status: int = 500
    seconds: float = 0.0
    times: int | None = None


class BadNode(_LocalServer):
    """A JSON-RPC node that misbehaves on demand. Calls pass through to `upstream` (a real node) unless a
    fault is set for their method ('*' matches every method); without an upstream it answers eth_chainId
    with `chain_id`, eth_blockNumber with `head`, and -32601 to anything else. `calls` counts JSON-RPC calls
    per method, `http_requests` counts HTTP requests (a batch is one)."""

    def __init__(self, upstream: str | None = None, *, chain_id: int = 31337, head: int = 0) -> None:
        self.upstream = upstream
        self.chain_id = chain_id
        self.head = head
        self.faults: dict[str, Fault] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.http_requests = 0
        self._lock = threading.Lock()
        self._upstream_http = requests.Session()
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                node._answer(self, body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> BadNode:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"bad-node-{self.port}")
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream_http.close()

    def set_fault(self, method: str, fault: Fault) -> None:
        with self._lock:
            self.faults[method] = fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()
            self.http_requests = 0

    # --- serving ---

    def _answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        request = json.loads(body)
        items = request if isinstance(request, list) else [request]
        faults = self._faults_for(items)
        whole = next((f for f in faults if f is not None and f.kind in ("garbage", "http", "drop", "swallow")), None)
        for fault in faults:
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.seconds)
        if whole is not None:
            self._send_whole_fault(handler, whole, request, items)
            return
        replies = self._replies(request, items)
        for item, reply, fault in zip(items, replies, faults):
            if fault is not None:
                _apply(fault, reply)
        self._send(handler, 200, json.dumps(replies if isinstance(request, list) else replies[0]).encode())

    def _faults_for(self, items: list[dict]) -> list[Fault | None]:
        with self._lock:
            self.http_requests += 1
            chosen = []
            for item in items:
                method = item.get("method", "")
                self.calls[method] += 1
                fault = self.faults.get(method) or self.faults.get("*")
                if fault is not None and fault.times is not None:
                    if fault.times <= 0:
                        fault = None
                    else:
                        fault.times -= 1
                chosen.append(fault)
            return chosen

    def _replies(self, request: Any, items: list[dict]) -> list[dict]:
        if self.upstream is None:
            return [self._local_reply(item) for item in items]
        upstream = self._upstream_http.post(self.upstream, json=request, timeout=10).json()
        if isinstance(request, list):
            by_id = {reply.get("id"): reply for reply in upstream}
            return [by_id[item.get("id")] for item in items]
        return [upstream]

    def _local_reply(self, item: dict) -> dict:
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": item.get("id")}
        method = item.get("method")
        if method == "eth_chainId":
            reply["result"] = hex(self.chain_id)
        elif method == "eth_blockNumber":
            reply["result"] = hex(self.head)
        else:
            reply["error"] = {"code": -32601, "message": f"method {method} not found"}
        return reply

    def _send_whole_fault(self, handler: BaseHTTPRequestHandler, fault: Fault, request: Any = None,
                          items: list[dict] | None = None) -> None:
        if fault.kind == "swallow":
            self._replies(request, items or [])  # the node acts on it; the caller never hears
            handler.close_connection = True
            _close(handler.connection)
        elif fault.kind == "drop":
            handler.close_connection = True
            _close(handler.connection)
        elif fault.kind == "garbage":
            self._send(handler, 200, b"<html>502 Bad Gateway</html>\x00{not json")
        else:
            self._send(handler, fault.status, b"upstream unavailable")

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a dropped connection is the point of the 'drop' fault, not an error to print


def _apply(fault: Fault, reply: dict) -> None:
    if fault.kind == "error":
        reply.pop("result", None)
        reply["error"] = {"code": fault.code, "message": fault.message}
    elif fault.kind == "null":
        reply.pop("error", None)
        reply["result"] = None
    elif fault.kind == "result":
        reply.pop("error", None)
        reply["result"] = fault.value
    elif fault.kind == "patch":
        result = reply.get("result")
        for target in result if isinstance(result, list) else [result]:
            if isinstance(target, dict):
                target.update(fault.fields)
