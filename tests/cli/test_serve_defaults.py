"""``line serve``'s defaults are the server's config classes' (written once, in
inference.settings), and the wire models quote the same limits."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from cli.app import app
from inference.config import ServeConfig
from inference.service import BatchingConfig, ServiceLimits
from inference.wire import RenderOptions


def serve_defaults() -> dict[str, object]:
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return {param.name: param.default for param in command.params}


def test_serve_options_default_to_the_config_classes():
    defaults, config = serve_defaults(), ServeConfig()
    assert (defaults["host"], defaults["port"]) == (config.host, config.port)
    assert defaults["max_batch"] == BatchingConfig().max_batch == config.batching.max_batch
    assert defaults["max_wait_ms"] == BatchingConfig().max_wait_ms
    assert defaults["max_images_per_request"] == ServiceLimits().max_images_per_request
    assert config.limits == ServiceLimits()


def test_the_help_screen_shows_those_defaults():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert f"[default: {BatchingConfig().max_batch}]" in text
    assert f"[default: {ServiceLimits().max_images_per_request}]" in text
    assert f"[default: {ServeConfig().port}]" in text


def test_the_wire_models_quote_the_servers_limits():
    limits = ServiceLimits()
    fields = RenderOptions.model_fields
    assert f"({limits.max_side} unless configured)" in (fields["width"].description or "")
    assert f"({limits.max_steps} unless configured)" in (fields["steps"].description or "")
