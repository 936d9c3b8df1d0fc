"""The Ray Serve application: image and text encoders (dynamic batching) and the search
shards (each archive split in ``search.shards`` blocks of rows) behind one FastAPI ingress
that validates queries, fans them out to the shards, merges their top-k and hot-swaps
archive versions. The roles live in their own modules: ``encoders`` (the encoder
deployments), ``shard`` (the shard deployment), ``archives`` (loading and polling archive
versions), ``search`` (what shards and ingress compute), ``media`` (page, thumbnails,
GeoJSON), ``ingress`` (the HTTP API); this one builds the application.

Import path (k8s RayService contract): ``rsir.serve.app:build_app_from_config`` with
``args: {config: configs/serve.yaml}``. Locally: ``rsir serve --config configs/serve.yaml``.
"""

import dataclasses
import threading
from pathlib import Path
from typing import Any

from ray import serve

from rsir.config import RecipeConfig, from_dict, load_config, to_dict
from rsir.serve.config import PROXY_ENV, EncoderConfig, ServeConfig
from rsir.serve.encoders import ImageEncoder, TextEncoder
from rsir.serve.ingress import Ingress
from rsir.serve.shard import SearchShard


def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def resolve_paths(cfg: ServeConfig) -> ServeConfig:
    """Absolute paths, so replicas (whatever their working directory) find the files."""
    return dataclasses.replace(
        cfg, checkpoint=_abs(cfg.checkpoint), recipe=_abs(cfg.recipe),
        archives=dataclasses.replace(cfg.archives, **{
            k: _abs(v) for k, v in dataclasses.asdict(cfg.archives).items()}),
        shards=dataclasses.replace(cfg.shards, **{
            k: _abs(v) for k, v in dataclasses.asdict(cfg.shards).items()}),
        api_key_file=_abs(cfg.api_key_file),
    )


def load_recipe(cfg: ServeConfig) -> dict[str, Any]:
    """The model recipe: ``cfg.recipe`` when given, else the one saved in the checkpoint.
    Raises ``ValueError`` when the recipe needs a checkpoint that is not given
    (:func:`rsir.inference.resolve_checkpoint`)."""
    from rsir.inference import resolve_checkpoint

    if cfg.recipe:
        recipe = to_dict(load_config(cfg.recipe))
        resolve_checkpoint(from_dict(RecipeConfig, recipe, cfg.recipe), cfg.checkpoint)
        return recipe
    if not cfg.checkpoint:
        raise ValueError("serve config: neither 'checkpoint' nor 'recipe' is set; a "
                         "training-free recipe (pretrained towers) needs 'recipe'")
    import torch

    state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{cfg.checkpoint}: no 'config' in the checkpoint; set 'recipe'")
    return state["config"]


def _encoder_options(enc: EncoderConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": enc.num_cpus, "num_gpus": enc.num_gpus},
        "max_ongoing_requests": enc.max_ongoing_requests,
    }
    if enc.autoscaling:
        opts["autoscaling_config"] = dict(enc.autoscaling)
    else:
        opts["num_replicas"] = enc.num_replicas
    return opts


def build_app(cfg: ServeConfig):
    """The bound Serve application (ingress, two encoders, the search shards) of a serving
    config."""
    cfg = resolve_paths(cfg)
    recipe = load_recipe(cfg)
    image = ImageEncoder.options(**_encoder_options(cfg.image_encoder)).bind(
        recipe, cfg.checkpoint, cfg.image_encoder.max_batch_size,
        cfg.image_encoder.batch_wait_timeout_s)
    text = TextEncoder.options(**_encoder_options(cfg.text_encoder)).bind(
        recipe, cfg.checkpoint, cfg.text_encoder.max_batch_size,
        cfg.text_encoder.batch_wait_timeout_s)
    ingress = Ingress.options(
        num_replicas=cfg.ingress.num_replicas,
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
    )
    return ingress.bind(to_dict(cfg), recipe, image, text, *search_shards(cfg))


def search_shards(cfg: ServeConfig) -> list[Any]:
    """One deployment per shard (``SearchShard0`` ...): Serve restarts a replica of one
    while the others keep answering."""
    s = cfg.search
    roots = {t: r for t, r in dataclasses.asdict(cfg.archives).items() if r}
    return [SearchShard.options(name=f"SearchShard{i}", num_replicas=s.replicas,
                                ray_actor_options={"num_cpus": s.num_cpus},
                                max_ongoing_requests=s.max_ongoing_requests)
            .bind(roots, i, s.shards, s.exact_max_candidates, cfg.poll_interval_s)
            for i in range(s.shards)]


def build_app_from_config(args: dict[str, Any]):
    """Serve application builder: ``args = {"config": "configs/serve.yaml"}`` (plus
    optional ``overrides``: a list of ``key.path=value``)."""
    cfg = load_config(args["config"], list(args.get("overrides", [])), cls=ServeConfig)
    return build_app(cfg)


def cli_main(args: Any) -> int:
    """``rsir serve --config configs/serve.yaml [key=value ...]``: run until interrupted."""
    from rsir.preflight import start_job
    from rsir.serve.preflight import check_serve

    cfg = load_config(args.config, list(getattr(args, "overrides", []) or []), cls=ServeConfig)
    local = start_job(check_serve(cfg), getattr(args, "address", None), 600.0,
                      env_vars=PROXY_ENV[cfg.proxy])
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name="rsir", route_prefix="/", blocking=False)
    front = cfg.proxy if local else "the cluster's Serve front"
    print(f"rsir serving on http://{cfg.host}:{cfg.port}/ behind {front} (docs: /docs)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        # A local Ray (Serve and HAProxy with it) ends with this process, without the
        # ingress replicas' 30 s drain, which is for load balancers in front of a cluster;
        # on a cluster only this application is taken down.
        if not local:
            serve.delete("rsir")
    return 0
