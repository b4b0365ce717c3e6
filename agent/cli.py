"""The ``line`` command."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from tools.toyworld.cli import toyworld_app

app = typer.Typer(
    help="LINE: LLM-based iterative neuron explanations for vision models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(toyworld_app, name="toyworld")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    generator: Annotated[
        list[str] | None,
        typer.Option(
            help="Generator spec (repeatable; the first is the default): tiny-sd, "
            "procedural:shapes, a diffusers hub id or folder."
        ),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="Target spec (repeatable): torchvision:<arch>[:<weights>|random], "
            "places365:<checkpoint>, python:<file.py>:<factory>, planted:shapes."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; non-loopback needs --token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8400,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
    max_batch: Annotated[int, typer.Option(help="A batch closes at this many items.")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(help="...or this long after its first item.")
    ] = 10.0,
    store: Annotated[
        Path | None, typer.Option(help="Image store folder [default: ~/.cache/line/store].")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="LINE_SERVER_TOKEN", help="Require 'Authorization: Bearer TOKEN'."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Generator dtype: float32, float16, bfloat16.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Default diffusion steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Default guidance scale.")] = None,
    width: Annotated[int | None, typer.Option(help="Default image width.")] = None,
    height: Annotated[int | None, typer.Option(help="Default image height.")] = None,
    max_images_per_request: Annotated[int, typer.Option(help="Cap per request.")] = 256,
    trust_checkpoints: Annotated[
        bool,
        typer.Option(help="Unpickle arbitrary objects in checkpoint files (only files you trust)."),
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
) -> None:
    """Run the batched inference server (image generation and activation measurement)."""
    import uvicorn

    from tools.registry import BackendSpecError, GeneratorOptions
    from tools.serve import ServeConfig, ServeConfigError, build_service
    from tools.server import create_app
    from tools.service import BatchingConfig, ServiceLimits

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    config = ServeConfig(
        generators=generator or [],
        targets=target or [],
        host=host,
        port=port,
        device=device,
        token=token,
        generator_options=GeneratorOptions(dtype, steps, guidance, width, height),
        batching=BatchingConfig(max_batch=max_batch, max_wait_ms=max_wait_ms),
        limits=ServiceLimits(max_images_per_request=max_images_per_request),
        trust_checkpoints=trust_checkpoints,
    )
    if store is not None:
        config.store = store
    try:
        service = build_service(config)
    except (ServeConfigError, BackendSpecError, OSError) as error:
        _fail(str(error))
    typer.echo(
        f"LINE server on http://{host}:{port} (store {config.store}); "
        f"generators: {', '.join(service.generators) or '-'}; "
        f"targets: {', '.join(service.targets) or '-'}",
        err=True,
    )
    uvicorn.run(create_app(service, token), host=host, port=port, log_level=log_level.lower())


@app.command()
def layers(
    target: Annotated[str, typer.Argument(help="Target spec, e.g. torchvision:resnet50.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "cpu",
    trust_checkpoints: Annotated[bool, typer.Option(help="See `line serve`.")] = False,
) -> None:
    """List a target model's layers and unit counts."""
    from tools.registry import BackendSpecError, load_target

    try:
        model = load_target(target, device, trust_checkpoints)
    except BackendSpecError as error:
        _fail(str(error))
    rows = [{"layer": layer.name, "units": layer.units} for layer in model.layers()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(row["layer"]) for row in rows)
    for row in rows:
        typer.echo(f"{row['layer']:<{width}}  {row['units']}")


if __name__ == "__main__":
    app()
