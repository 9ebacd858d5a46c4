"""Starting and stopping the server: load the base and every ``--adapter`` (failing fast), then serve.

On SIGTERM uvicorn stops accepting connections, every request already accepted is answered
(queued ones included), the batch worker stops, and the process exits 0. Ctrl-C (SIGINT) drains
the same way and then exits 130, as an interrupted command does.
"""

from __future__ import annotations

import copy
import errno
import functools
import logging
import signal
import socket
from typing import Any

import torch

from peft_hybrid.serve.adapters import IDLE_ADAPTER, AdapterCache
from peft_hybrid.serve.app import ServeState, create_app
from peft_hybrid.serve.batcher import Batcher
from peft_hybrid.serve.engine import Runner
from peft_hybrid.serve.metrics import Metrics
from peft_hybrid.serve.requests import Limits, RequestError
from peft_hybrid.serve.scheduler import ContinuousBatcher
from peft_hybrid.serve.slotbatch import SlotBatch

READY_MESSAGE = "peft-hybrid serve ready at"
logger = logging.getLogger("peft_hybrid.serve")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_state(options: Any, api_key: str | None) -> ServeState:
    """The loaded base and adapters, the cache, the batcher and the metrics, from the parsed options."""
    from peft_hybrid.config import HybridConfig
    from peft_hybrid.modeling.loading import load_base
    from peft_hybrid.modeling.model import HybridModel

    quantize = getattr(options, "quantize", None)
    quantization = None if quantize is None else serve_quantization(quantize, options.dtype)
    try:
        base, tokenizer = load_base(options.base, quantization_config=quantization)
    except Exception as err:
        raise ValueError(f"--base {options.base}: the base model could not be loaded: {err}") from err
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # The active adapter holds nothing, so requests pick adapters per row and any of them can be evicted.
    model = HybridModel(base, HybridConfig(mode="none"), tokenizer=tokenizer, adapter_name=IDLE_ADAPTER)
    # A quantized base keeps its 4/8-bit Linears; --dtype was its compute dtype.
    model = model.to(device=device, **({} if quantize else {"dtype": _DTYPES[options.dtype]})).eval()
    scheduler = getattr(options, "scheduler", "continuous")
    batcher: Batcher | ContinuousBatcher
    in_flight = (lambda: batcher.in_flight()) if scheduler == "continuous" else None
    metrics = Metrics(lambda: batcher.depth(), in_flight)
    cache = AdapterCache(
        model,
        options.adapters,
        allow=options.allow_adapter,
        max_adapters=options.max_adapters,
        on_load=lambda adapter_id: metrics.adapter_loads.labels(adapter_id).inc(),
    )
    cache.lazy = options.lazy_adapters
    try:
        cache.load_configured()
    except RequestError as err:
        raise ValueError(f"--adapter: {err.message}") from err
    limits = Limits(max_input_tokens=options.max_input_tokens, max_new_tokens_limit=options.max_new_tokens_limit)
    fast = fast_decoding(options, torch.device(device).type)
    if scheduler == "continuous":
        batcher = ContinuousBatcher(
            model,
            tokenizer,
            cache,
            limits,
            max_batch_size=options.max_batch_size,
            max_batch_total_tokens=options.max_batch_total_tokens,
            max_queue=options.max_queue,
            metrics=metrics,
            fast=functools.partial(SlotBatch.sized, model, options.max_batch_size, limits.max_new_tokens_limit)
            if fast
            else None,
        )
    else:
        runner = Runner(model, tokenizer, cache, limits, on_tokens=lambda a, n: metrics.tokens.labels(a).inc(n))
        batcher = Batcher(
            runner,
            max_batch_size=options.max_batch_size,
            max_wait_ms=options.max_wait_ms,
            max_queue=options.max_queue,
            on_batch=metrics.batch_size.observe,
        )
    info = _info(options, limits, torch.device(device).type, getattr(base.config, "_commit_hash", None), scheduler)
    info["fast"] = fast  # the decision, not the flag: unset means "where it wins" (`fast_decoding`)
    # The event loop tokenizes requests while the worker decodes: a fast tokenizer must not be
    # shared between threads (changing its truncation borrows it mutably), so each gets its own.
    request_tokenizer = copy.deepcopy(tokenizer)
    return ServeState(
        options.base, request_tokenizer, cache, batcher, limits, metrics, info, api_key, options.max_request_bytes
    )


def fast_decoding(options: Any, device_type: str) -> bool:
    """``--fast``/``--no-fast``, or unset: on where the compiled step wins (a GPU, an unquantized base).

    On a CPU the compiled batch measured 0.98x to 1.14x the eager one's tokens/s (BENCHMARKS.md), not
    worth its compile; on a quantized base it is unmeasured, so it runs only when asked for.
    ``--fast`` with ``--scheduler static`` is refused by ``peft_hybrid.cli.serve.check``.
    """
    fast = getattr(options, "fast", None)
    if fast is None:
        return (
            getattr(options, "scheduler", "continuous") == "continuous"
            and device_type == "cuda"
            and not getattr(options, "quantize", None)
        )
    return bool(fast)


def _info(options: Any, limits: Limits, device_type: str, model_sha: str | None, scheduler: str) -> dict[str, Any]:
    """What ``GET /info`` answers besides the adapters: TGI's fields, then this server's limits."""
    from peft_hybrid import __version__

    return {
        "model_id": options.base,
        "model_sha": model_sha,
        "model_dtype": options.dtype,
        "quantize": getattr(options, "quantize", None),
        "model_device_type": device_type,
        "model_pipeline_tag": "text2text-generation",
        "max_input_tokens": limits.max_input_tokens,
        "max_new_tokens_limit": limits.max_new_tokens_limit,
        "max_stop_sequences": limits.max_stop_sequences,
        "max_best_of": 1,
        # TGI's required fields, in this server's terms: requests batched or waiting, tokens in and out
        # of one request, the one event loop that validates requests, one input per TGI request.
        "max_concurrent_requests": options.max_queue + options.max_batch_size,
        "max_total_tokens": limits.max_input_tokens + limits.max_new_tokens_limit,
        "validation_workers": 1,
        "max_client_batch_size": 1,
        "scheduler": scheduler,
        "max_batch_size": options.max_batch_size,
        "max_batch_total_tokens": getattr(options, "max_batch_total_tokens", None),
        "max_wait_ms": options.max_wait_ms,
        "max_queue": options.max_queue,
        "max_adapters": options.max_adapters,
        "lazy_adapters": list(options.allow_adapter),
        "router": "peft-hybrid",
        "version": __version__,
    }


def serve_quantization(quantize: str, dtype: str) -> Any:
    """``--quantize`` with ``--dtype``: a 4-bit base computes in ``dtype``; 8-bit takes float32 only."""
    from peft_hybrid.modeling.quantization import QuantizationError, bnb_config

    if quantize == "bitsandbytes" and dtype != "float32":
        raise QuantizationError(
            f"--quantize bitsandbytes --dtype {dtype}: the 8-bit base computes in bitsandbytes' own int8/fp16 "
            "kernels; leave --dtype at float32, or quantize to 4 bits (--quantize bitsandbytes-nf4) to pick "
            "the compute dtype."
        )
    return bnb_config(quantize, compute_dtype=None if quantize == "bitsandbytes" else dtype)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a ValueError naming the option that is wrong."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: pass a port from 0 to 65535 (0 picks a free one).")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"--host {host}: not an address or host name this machine can resolve ({err}).") from None
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ValueError(
                f"--port {port}: already in use on {host}; pick another port (0 picks a free one)."
            ) from None
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err}).") from None
    return sock


def redact_query(record: logging.LogRecord) -> bool:
    """An access-log filter: query-string values (``?api_key=...``) never reach the log."""
    if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
        path, sep, query = record.args[2].partition("?")
        if sep:
            hidden = "&".join(f"{part.partition('=')[0]}=<redacted>" for part in query.split("&"))
            record.args = (*record.args[:2], f"{path}?{hidden}", *record.args[3:])
    return True


def serve(state: ServeState, sock: socket.socket, log_level: str = "info") -> int:
    """Serve on ``sock`` (from `bind`) until SIGTERM/SIGINT; returns 0 once every accepted request is answered."""
    import uvicorn

    host, port = sock.getsockname()[:2]  # the real port, also for port 0
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                print(f"{READY_MESSAGE} {url}", flush=True)

        def handle_exit(self, sig: int, frame) -> None:
            if not self.should_exit:
                logger.info("signal %d: no new connections; finishing the requests in flight", sig)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(create_app(state), log_level=log_level, access_log=True, timeout_graceful_shutdown=None)
    logging.getLogger("uvicorn.access").addFilter(redact_query)  # after Config, which configures logging
    # uvicorn re-raises the signal it stopped on once it has drained; by then the work is done,
    # so that re-raise must end the process normally (exit 0) instead of by the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        _Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    logger.info("stopped")
    return 0
