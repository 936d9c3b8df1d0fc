"""Contrastive training-step throughput of a recipe's model, fp32 against bf16 autocast.

Pure PyTorch + the rsir library (no Ray), so it also runs on a bare GPU box. Prints
samples/s of forward + backward + optimiser step for both precisions from one run and
their ratio. Example (the time-series paper's encoders, ViT-B/16 at 224 px):

    python bench/model_step.py --config configs/levircc_gff_sub.yaml --batch 64 \
        model.image_tower.options.pretrained=null model.text_tower.options.pretrained=null
"""

from __future__ import annotations

import argparse
import time

import torch

from rsir.config import load_config
from rsir.losses import create_loss
from rsir.models import create_model
from rsir.models.text_towers import tokens_to
from rsir.optim import create_optimizer
from rsir.training_step import contrastive_loss, optimizer_step


def measure(cfg, batch: int, steps: int, bf16: bool, device: str) -> float:
    torch.manual_seed(0)
    model = create_model(cfg.model, cfg.loss).to(device).train()
    loss_fn = create_loss(cfg.loss)
    opt = create_optimizer(cfg.optim, model.parameters())
    c, s = len(cfg.data.bands), cfg.data.image_size
    key = "image_pair" if cfg.data.task == "pair" else "image"
    shape = (batch, 2, c, s, s) if key == "image_pair" else (batch, c, s, s)
    images = torch.randn(shape, device=device)
    tokens = tokens_to(model.tokenize([f"caption number {i} of the batch" for i in range(batch)]),
                       device)

    inputs = {key: images, "tokens": tokens}

    def step() -> None:
        contrastive_loss(model, loss_fn, inputs, bf16=bf16)["loss"].backward()
        optimizer_step(model, opt)

    for _ in range(3):  # warm-up
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{cfg.name}: {cfg.model.image_tower.options.get('model_name')} at "
          f"{cfg.data.image_size} px, task {cfg.data.task}, fusion {cfg.model.fusion}, "
          f"batch {args.batch}, on {name}")
    fp32 = measure(cfg, args.batch, args.steps, bf16=False, device=device)
    print(f"  fp32: {fp32:8.1f} samples/s")
    if device == "cuda":
        bf16 = measure(cfg, args.batch, args.steps, bf16=True, device=device)
        print(f"  bf16: {bf16:8.1f} samples/s  ({bf16 / fp32:.2f}x fp32)")
        print(f"  peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
