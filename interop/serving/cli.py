"""``python -m interop serve``: the app under uvicorn, with a graceful SIGTERM.

On SIGTERM (or Ctrl-C) the server stops listening at once, so new connections are
refused; requests already received finish (up to ``--graceful-timeout`` seconds), keep-alive
connections are closed after their current response, and ``/ready`` says 503 meanwhile.
Then the model's temporary files are removed and the process exits with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from interop.deploy import BACKENDS


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``serve`` on ``python -m interop``'s subcommands."""
    p = subparsers.add_parser("serve", help="serve a model over HTTP (classify, health, ready, metrics, KServe v2)")
    p.set_defaults(run=run)
    p.add_argument("source", help="inference model dir, .pdparams file, orbax variables checkpoint or training workdir")
    p.add_argument("--backend", choices=BACKENDS, default="paddle-cpu")
    p.add_argument(
        "--model", help="registered model name (needed for an orbax checkpoint or workdir; inferred otherwise)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (printed on start)")
    p.add_argument(
        "--grpc-port",
        type=int,
        help="also serve the KServe v2 protocol over gRPC on this port (Triton's default is 8001; 0 picks a free one)",
    )
    p.add_argument("--labels", help="class names, one per line (default: ImageNet's for 1000 classes)")
    p.add_argument("--threads", type=int, help="engine threads (default: all cores)")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long the first image of a batch waits for more")
    p.add_argument(
        "--decode-wait-ms",
        type=float,
        default=50.0,
        help="how much longer a batch that is not full waits for images being decoded at that moment (0: no longer)",
    )
    p.add_argument("--max-queue", type=int, default=256, help="images waiting beyond which requests get 503")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for its result (then 504)")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit (then 413)")
    p.add_argument("--max-images", type=int, default=32, help="images per request")
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="pixels per decoded image (decompression-bomb limit)"
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=128,
        help="open connections; beyond it the longest-idle one is closed, or, when none is idle, the newcomer gets 503 + Retry-After",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a request head may take to arrive (then closed, or 408)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a request body may take to arrive after its head (then 408)",
    )
    p.add_argument(
        "--keep-alive-timeout", type=float, default=5.0, help="seconds an idle kept-alive connection stays open"
    )
    p.add_argument(
        "--min-body-rate",
        type=float,
        default=1024.0,
        help="bytes/s a request body must keep up over each rate window (then 408; 0: off)",
    )
    p.add_argument("--body-rate-window", type=float, default=5.0, help="seconds over which --min-body-rate is measured")
    p.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds in-flight requests get after SIGTERM")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def run(args) -> int:
    from vitjax.hostmem import keep_freed_memory

    keep_freed_memory()  # before the engine's first buffers (vitjax.hostmem; VITJAX_MALLOC=system: off)
    try:
        import uvicorn  # noqa: F401  (only whether the serve extra is installed)
    except ImportError:
        raise SystemExit(
            "serve needs the serve extra: pip install 'vitjax[serve]' (fastapi, uvicorn, python-multipart, prometheus-client)"
        ) from None
    from interop.serving.config import ServeConfig

    try:  # the limits first: a bad flag is one line, before anything heavy is imported
        config = ServeConfig(
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            decode_wait_ms=args.decode_wait_ms,
            max_queue_images=args.max_queue,
            request_timeout_s=args.timeout,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            max_images_per_request=args.max_images,
            max_pixels=args.max_pixels,
            max_connections=args.max_concurrency,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            keep_alive_timeout_s=args.keep_alive_timeout,
            min_body_rate=args.min_body_rate,
            body_rate_window_s=args.body_rate_window,
            grpc_address=None if args.grpc_port is None else f"{args.host}:{args.grpc_port}",
        )
    except ValueError as e:
        raise SystemExit(f"serve: {e}") from None
    from interop.serving import create_app, load_served_model

    # force: a dependency (absl, logging from orbax at import) has already put a handler on the root logger,
    # which would make basicConfig a no-op and leave our lines at absl's WARNING.
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    model = load_served_model(
        args.source,
        args.backend,
        model_name=args.model,
        labels=args.labels,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
    )
    from interop.serving.connections import uvicorn_config

    app = create_app(model, config)
    server = GracefulServer(
        uvicorn_config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=args.graceful_timeout,
        ),
        on_exit=lambda: setattr(app.state.serving, "draining", True),
    )
    try:
        server.run()
    finally:
        model.close()
    return 0


def _server_class():
    import uvicorn

    class _GracefulServer(uvicorn.Server):
        """uvicorn's server that marks the app as draining on SIGTERM and prints its bound address."""

        def __init__(self, config, on_exit):
            super().__init__(config)
            self._on_exit = on_exit

        def handle_exit(self, sig, frame) -> None:
            self._on_exit()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            """uvicorn's, except that a finished graceful shutdown returns instead of re-raising the signal.

            uvicorn re-raises SIGTERM once it has drained, which kills the process before
            ``run``'s clean-up (the model's temporary export directory) can run; we exit 0.
            """
            with super().capture_signals():
                yield
                if self._captured_signals:
                    logging.getLogger("interop.serving").info(
                        "shut down gracefully after signal %s", self._captured_signals[-1]
                    )
                    self._captured_signals.clear()

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.servers and self.servers[0].sockets:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                print(f"serving on http://{host}:{port}", flush=True, file=sys.stdout)

    return _GracefulServer


def GracefulServer(config, on_exit):  # noqa: N802 - builds the class lazily so importing this module needs no uvicorn
    return _server_class()(config, on_exit)
