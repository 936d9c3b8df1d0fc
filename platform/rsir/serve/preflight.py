"""The preflight of ``rsir serve``: the model recipe and its weights, the published archives,
and the replicas of the deployments (``rsir.preflight`` does the checking)."""

from __future__ import annotations

from pathlib import Path

from rsir.config import RecipeConfig, from_dict, load_yaml
from rsir.preflight import Check, ResourceRequest, check_recipe
from rsir.serve.config import ServeConfig


def serve_requests(cfg: ServeConfig) -> list[ResourceRequest]:
    """The replicas of a Serve config's deployments."""
    out = []
    for name in ("image_encoder", "text_encoder"):
        enc = getattr(cfg, name)
        count = enc.autoscaling.get("min_replicas", 1) if enc.autoscaling else enc.num_replicas
        out.append(ResourceRequest(f"{name} replica", int(count),
                                   {"CPU": enc.num_cpus, "GPU": enc.num_gpus},
                                   {"GPU": f"{name}.num_gpus=0", "CPU": f"{name}.num_cpus=C",
                                    "count": f"{name}.num_replicas=N"}))
    out.append(ResourceRequest("search shard replica", cfg.search.shards * cfg.search.replicas,
                               {"CPU": cfg.search.num_cpus},
                               {"CPU": "search.num_cpus=C", "count": "search.shards=N"}))
    out.append(ResourceRequest("ingress replica", cfg.ingress.num_replicas,
                               {"CPU": cfg.ingress.num_cpus},
                               {"CPU": "ingress.num_cpus=C", "count": "ingress.num_replicas=N"}))
    return out


def check_serve(cfg: ServeConfig) -> Check:
    """A Serve config: its model recipe and checkpoint, archives, and replicas."""
    recipe = _serve_recipe(cfg)
    if recipe is None:
        why = (f"checkpoint {cfg.checkpoint}: no such file, or it holds no recipe ('config'); "
               "set 'recipe'" if cfg.checkpoint else
               "neither 'checkpoint' nor 'recipe' is set; a training-free recipe (pretrained "
               "towers) needs 'recipe'")
        check = Check(cfg.name, "serve", problems=[f"serve {cfg.name}: {why}"])
    else:
        from rsir.inference import resolve_checkpoint

        check = check_recipe(recipe, "serve", checkpoint=cfg.checkpoint, read_shards=False)
        check.recipe = f"{cfg.name} (model recipe {recipe.name})"
        try:  # no checkpoint: only a training-free recipe runs
            resolve_checkpoint(recipe, cfg.checkpoint)
        except ValueError as err:
            check.problems.append(f"serve {cfg.name}: {err}")
    for target in ("images", "pairs", "captions"):
        root = getattr(cfg.archives, target)
        if root and not (Path(root) / "CURRENT").is_file():
            check.problems.append(f"serve {cfg.name}: archives.{target} = {root}: no published "
                                  "archive (CURRENT); publish one with rsir index")
    check.requests = serve_requests(cfg)
    return check


def _serve_recipe(cfg: ServeConfig) -> RecipeConfig | None:
    if cfg.recipe:
        return from_dict(RecipeConfig, load_yaml(cfg.recipe), cfg.recipe)
    if not cfg.checkpoint:
        return None
    path = Path(cfg.checkpoint)
    if not path.is_file():
        return None
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return from_dict(RecipeConfig, state["config"], str(path)) if "config" in state else None
