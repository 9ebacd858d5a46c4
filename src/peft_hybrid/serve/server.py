"""Starting and stopping the server: load the base and every ``--adapter`` (failing fast), then serve.

On SIGTERM uvicorn stops accepting connections, every request already accepted is answered
(queued ones included), the batch worker stops, and the process exits 0. Ctrl-C (SIGINT) drains
the same way and then exits 130, as an interrupted command does.
"""

from __future__ import annotations

import copy
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

READY_MESSAGE = "peft-hybrid serve ready at"
logger = logging.getLogger("peft_hybrid.serve")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_state(options: Any, api_key: str | None) -> ServeState:
    """The loaded base and adapters, the cache, the batcher and the metrics, from the parsed options."""
    from peft_hybrid import __version__
    from peft_hybrid.config import HybridConfig
    from peft_hybrid.modeling.loading import load_base
    from peft_hybrid.modeling.model import HybridModel

    try:
        base, tokenizer = load_base(options.base)
    except Exception as err:
        raise ValueError(f"--base {options.base}: the base model could not be loaded: {err}") from err
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # The active adapter holds nothing, so requests pick adapters per row and any of them can be evicted.
    model = HybridModel(base, HybridConfig(mode="none"), tokenizer=tokenizer, adapter_name=IDLE_ADAPTER)
    model = model.to(device=device, dtype=_DTYPES[options.dtype]).eval()
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
    try:
        cache.load_configured()
    except RequestError as err:
        raise ValueError(f"--adapter: {err.message}") from err
    limits = Limits(max_input_tokens=options.max_input_tokens, max_new_tokens_limit=options.max_new_tokens_limit)
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
    info = {
        "model_id": options.base,
        "model_dtype": options.dtype,
        "model_device_type": torch.device(device).type,
        "model_pipeline_tag": "text2text-generation",
        "max_input_tokens": limits.max_input_tokens,
        "max_new_tokens_limit": limits.max_new_tokens_limit,
        "max_stop_sequences": limits.max_stop_sequences,
        "max_best_of": 1,
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
    # The event loop tokenizes requests while the worker decodes: a fast tokenizer must not be
    # shared between threads (changing its truncation borrows it mutably), so each gets its own.
    request_tokenizer = copy.deepcopy(tokenizer)
    return ServeState(options.base, request_tokenizer, cache, batcher, limits, metrics, info, api_key)


def serve(state: ServeState, host: str, port: int, log_level: str = "info") -> int:
    """Serve until SIGTERM/SIGINT; returns 0 once every accepted request has been answered."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # bound here so that port 0 works and the printed URL is the real one
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}"

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
    # uvicorn re-raises the signal it stopped on once it has drained; by then the work is done,
    # so that re-raise must end the process normally (exit 0) instead of by the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        _Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    logger.info("stopped")
    return 0
