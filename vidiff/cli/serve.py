"""``vidiff serve``: the HTTP job service and web page (``pip install vidiff[serve]``)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path

from vidiff.cli.generate import resolve_device
from vidiff.cli.main import CLIError

EXAMPLES = """\
examples:
  vidiff serve
      the bundled model on http://127.0.0.1:8000 (open it in a browser)
  vidiff serve --models ~/models --data ~/vidiff-jobs --device cuda:0 --device cuda:1
      every model folder in ~/models (chosen by name), one worker per GPU
  vidiff serve --host 0.0.0.0 --token-file secret.txt
      reachable from other machines: a bearer token is then required
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="Serve image-to-video as an HTTP job service with a web page.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="An HTTP service (JSON API under /v1, a web page at /) that queues generation "
                       "jobs in SQLite under --data and runs them one at a time per device.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--models", action="append", default=[], metavar="DIR",
                   help="a folder whose entries (checkpoint folders, .safetensors files) clients may choose by "
                   "name; repeatable (the bundled model is always offered)")
    p.add_argument("--data", default="vidiff-serve-data",
                   help="folder for the job database and the jobs' files (default ./vidiff-serve-data)")
    p.add_argument("--token", default=None, help="bearer token clients must send (required off loopback)")
    p.add_argument("--token-file", default=None, help="read the token from this file (keeps it out of ps)")
    p.add_argument("--device", action="append", default=None,
                   help="a device to run jobs on, one worker each; repeatable (default auto)")
    p.add_argument("--on-restart", default="requeue", choices=("requeue", "fail"),
                   help="jobs that were running when the server stopped: run them again, or mark them failed")
    p.add_argument("--max-queue", type=int, default=64, help="queued jobs allowed; more get 429 (default 64)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (default 20)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                   help="largest input image in pixels (default 4096x4096)")
    p.add_argument("--cors-origin", action="append", default=[],
                   help="a web origin allowed to call the API from a browser (default none: CORS off)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token(args: argparse.Namespace) -> str | None:
    if args.token and args.token_file:
        raise CLIError("give --token or --token-file, not both")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"--token-file {args.token_file}: cannot read it ({e})") from None
        if not token:
            raise CLIError(f"--token-file {args.token_file} is empty")
        return token
    return args.token


def run(args: argparse.Namespace) -> int:
    token = _token(args)
    if not _is_loopback(args.host) and not token:
        raise CLIError(f"--host {args.host} is reachable from other machines: give --token or --token-file "
                       "(refusing to serve without authentication)")
    if token is not None and len(token) < 8:
        raise CLIError("--token must be at least 8 characters")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in 0..65535, got {args.port}")
    for name in ("max_queue", "max_image_pixels"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.max_upload_mb > 0:
        raise CLIError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    devices = [resolve_device(d) for d in (args.device or ["auto"])]
    if len(set(devices)) != len(devices):
        raise CLIError(f"--device given twice for one device: {devices}")
    try:
        import uvicorn

        from vidiff.serve.app import ServeConfig, create_app
        from vidiff.serve.worker import model_registry
    except ImportError as e:
        raise CLIError(f"vidiff serve needs the serve extra: pip install 'vidiff[serve]' ({e})") from None
    from vidiff.pipelines.image_to_video import bundled_model_path

    try:
        models = model_registry([Path(d) for d in args.models], bundled_model_path())
    except ValueError as e:
        raise CLIError(f"--models: {e}") from None
    if not models:
        raise CLIError("no model to serve: the bundled model is not installed and no --models folder was given")
    data = Path(args.data)
    if data.exists() and not data.is_dir():
        raise CLIError(f"--data {data} is a file, not a folder")
    config = ServeConfig(data_dir=data, models=models, devices=devices, token=token,
                         max_upload_bytes=int(args.max_upload_mb * 2**20), max_image_pixels=args.max_image_pixels,
                         max_queue=args.max_queue, on_restart=args.on_restart, cors_origins=args.cors_origin)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    port = sock.getsockname()[1]
    app = create_app(config)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"vidiff serve: http://{shown}:{port}/ ({len(models)} model(s), devices {', '.join(devices)}, "
          f"data in {data})", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    return 0
