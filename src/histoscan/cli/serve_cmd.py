"""``histoscan serve``: the HTTP API and the web page for one model."""

from __future__ import annotations

import ipaddress
import logging
import secrets
from pathlib import Path
from typing import Annotated

import typer

from histoscan.cli.app import command
from histoscan.cli.options import DeviceOpt, EngineOpt, TtaOpt

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@command("serve")
def serve(
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Model file (default: bundled).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; other machines need 0.0.0.0.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            help="Require 'Authorization: Bearer TOKEN' on /v1 (the page asks for it).",
            envvar="HISTOSCAN_TOKEN",
            show_envvar=True,
        ),
    ] = None,
    engine: EngineOpt = "auto",
    device: DeviceOpt = "auto",
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body.")] = 1024.0,
    resize: Annotated[
        bool, typer.Option(help="Accept patches of other sizes, resized to 96.")
    ] = False,
    tta: TtaOpt = "d4",
    max_batch: Annotated[int, typer.Option(min=1, help="Most patches per forward pass.")] = 64,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="A web origin (https://app.example.org) whose pages may call the API; repeat "
            "for more. Other sites are refused (403), token or not."
        ),
    ] = None,
    threshold: Annotated[
        str | None,
        typer.Option(
            metavar="RULE",
            help="Decision threshold: a probability, youden or sens:0.95 (on the model's "
            "validation logits); default: the model's. A request may pass ?threshold=P.",
        ),
    ] = None,
) -> None:
    """Serve the model: API at /v1 (docs at /docs) and a page at / for patches and slides."""
    import uvicorn

    from histoscan.data.views import TTA_VIEWS
    from histoscan.errors import HistoscanError
    from histoscan.predict import Predictor
    from histoscan.serve import ServeSettings, create_app

    if token is not None and not token.strip():
        raise HistoscanError("--token is empty; give a token or leave the option out")
    if tta not in TTA_VIEWS:
        raise HistoscanError(f"unknown TTA mode {tta!r}; choose from {', '.join(TTA_VIEWS)}")
    predictor = Predictor.load(model, engine=engine, device=device, batch_size=max_batch)
    predictor.threshold(threshold)  # a bad rule is one line now, not a failed start later
    try:
        settings = ServeSettings(
            token=token,
            max_upload_mb=max_upload_mb,
            resize=resize,
            tta=tta,
            max_batch=max_batch,
            threshold=threshold,
            host=host,  # Host headers must name it (or localhost): no DNS rebinding
            allow_origins=tuple(allow_origin or ()),
        )
    except ValueError as exc:
        raise HistoscanError(f"--allow-origin: {exc}") from None
    app = create_app(predictor, settings)
    if not is_loopback(host) and not token:
        suggestion = secrets.token_urlsafe(16)
        typer.secho(
            f"warning: serving on {host} without a token: anyone who can reach this "
            f"machine can use it; consider --token {suggestion}",
            fg="yellow",
            err=True,
        )
    shown = f"[{host}]" if ":" in host else host
    run = predictor.describe()
    typer.echo(
        f"histoscan: {predictor.name} v{predictor.version} "
        f"({run['engine']} {run['precision']} on {run['device']}, TTA {tta}) "
        f"on http://{shown}:{port}/  (API docs at /docs)"
    )
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
