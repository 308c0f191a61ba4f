"""`layercode-pipeline` command line: listen, simulate, backfill, demo.

Heavy imports (Dagster, dbt, uvicorn) happen inside each command so `--help` is instant.
"""

from __future__ import annotations

import logging
import sys

import click


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


@click.group()
@click.version_option(package_name="layercode-pipeline")
def main() -> None:
    """Turn every Layercode voice-agent call into warehouse tables."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=int)
@click.option("--insecure-skip-verify", is_flag=True, help="Accept unsigned webhooks (local experiments only).")
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes.")
def listen(host: str, port: int, insecure_skip_verify: bool, workers: int) -> None:
    """Serve the webhook listener (POST /webhook, POST /agents/{id}/webhook, GET /healthz)."""
    import os

    import uvicorn

    from layercode_pipeline.config import Settings
    from webhook_listener.app import create_app

    settings = Settings()
    _configure_logging(settings.log_level)
    if not settings.agent_secrets and not insecure_skip_verify:
        raise click.ClickException(
            "no webhook secret configured: set LAYERCODE_WEBHOOK_SECRET (default agent) or "
            "LAYERCODE_WEBHOOK_SECRETS (JSON agent_id -> secret), or pass --insecure-skip-verify")
    if insecure_skip_verify:
        click.secho("WARNING: signature verification is disabled; anyone can post events.", fg="red", err=True)
    if workers > 1:
        os.environ["LAYERCODE_INSECURE_SKIP_VERIFY"] = "1" if insecure_skip_verify else "0"
        uvicorn.run("webhook_listener.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    access_log=False, log_level=settings.log_level.lower())
    else:
        uvicorn.run(create_app(settings, insecure_skip_verify=insecure_skip_verify), host=host, port=port,
                    access_log=False, log_level=settings.log_level.lower())


if __name__ == "__main__":
    main()
