"""Losses against hand-computed values, and the global batch against one process."""

from __future__ import annotations

import math

import pytest
import torch

from rsir.config import LossConfig
from rsir.losses import LOSSES, SymmetricInfoNCE, TripletRankingLoss, create_loss
from rsir.serve.fixture import free_ports

# ---------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------


def test_infonce_two_pairs_by_hand() -> None:
    # images e1, e2; texts t1 = e1, t2 = (0.6, 0.8); logit scale 1.
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = image @ text.T = [[1, 0.6], [0, 0.8]]
    # i2t row 0: -log(e^1 / (e^1 + e^0.6))   = log(1 + e^-0.4)
    # i2t row 1: -log(e^0.8 / (e^0 + e^0.8)) = log(1 + e^-0.8)
    # t2i col 0: -log(e^1 / (e^1 + e^0))     = log(1 + e^-1)
    # t2i col 1: -log(e^0.8 / (e^0.6 + e^0.8)) = log(1 + e^-0.2)
    i2t = (math.log1p(math.exp(-0.4)) + math.log1p(math.exp(-0.8))) / 2  # 0.6762...
    t2i = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-0.2))) / 2  # 0.5553...
    out = SymmetricInfoNCE(lambda_i2t=0.5, lambda_t2i=0.5)(image, text, torch.tensor(1.0))
    assert out["loss_i2t"].item() == pytest.approx(i2t, abs=1e-6)
    assert out["loss_t2i"].item() == pytest.approx(t2i, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.5 * i2t + 0.5 * t2i, abs=1e-6)
    # λ1 / λ2 weight the two directions (multilanguage paper, eq. 8); scale 1/τ multiplies
    weighted = SymmetricInfoNCE(lambda_i2t=0.25, lambda_t2i=0.75)(image, text, torch.tensor(1.0))
    assert weighted["loss"].item() == pytest.approx(0.25 * i2t + 0.75 * t2i, abs=1e-6)
    scaled = SymmetricInfoNCE()(image, text, torch.tensor(2.0))  # logits [[2, 1.2], [0, 1.6]]
    i2t2 = (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6))) / 2
    assert scaled["loss_i2t"].item() == pytest.approx(i2t2, abs=1e-6)


# images e1, e2, e3; texts t1 = (0.6, 0.48, 0.64), t2 = e2, t3 = e3 (all unit length).
# s[i, j] = <image_i, text_j> = t_j[i]:
#   s = [[0.6,  0, 0],
#        [0.48, 1, 0],
#        [0.64, 0, 1]]      positives (diagonal) 0.6, 1, 1; margin 0.2
# image->text, anchor image i, negative texts j != i: [0.2 - s_ii + s_ij]_+
#   row 0: [0.2 - 0.6 + 0]_+ = 0, [0.2 - 0.6 + 0]_+ = 0
#   row 1: [0.2 - 1 + 0.48]_+ = 0, [0.2 - 1 + 0]_+ = 0
#   row 2: [0.2 - 1 + 0.64]_+ = 0, [0.2 - 1 + 0]_+ = 0        -> i2t = 0
# text->image, anchor text j, negative images i != j: [0.2 - s_jj + s_ij]_+
#   col 0: [0.2 - 0.6 + 0.48]_+ = 0.08, [0.2 - 0.6 + 0.64]_+ = 0.24
#   col 1: [0.2 - 1 + 0]_+ = 0, [0.2 - 1 + 0]_+ = 0
#   col 2: [0.2 - 1 + 0]_+ = 0, [0.2 - 1 + 0]_+ = 0
#   VSE (sum over negatives): 0.08 + 0.24 = 0.32;  VSE++ (hardest): max(0.08, 0.24) = 0.24
TRIPLET_IMAGES = torch.eye(3)
TRIPLET_TEXTS = torch.tensor([[0.6, 0.48, 0.64], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize(("hardest", "t2i"), [(False, 0.32), (True, 0.24)])
def test_triplet_three_pairs_by_hand(hardest: bool, t2i: float) -> None:
    loss = TripletRankingLoss(margin=0.2, hardest_negative=hardest)
    out = loss(TRIPLET_IMAGES, TRIPLET_TEXTS)
    assert out["loss_i2t"].item() == pytest.approx(0.0, abs=1e-7)
    assert out["loss_t2i"].item() == pytest.approx(t2i, abs=1e-6)
    assert out["loss"].item() == pytest.approx(t2i, abs=1e-6)
    # swapping the modalities swaps the directions
    swapped = loss(TRIPLET_TEXTS, TRIPLET_IMAGES)
    assert swapped["loss_i2t"].item() == pytest.approx(t2i, abs=1e-6)


def test_triplet_margin_and_gradient() -> None:
    # margin 0: only a negative scored above the positive counts. Text 1: s_10 = 0.48 < 0.6
    # = s_00 (no loss), s_20 = 0.64 > 0.6 -> 0.04; nothing else violates -> 0.04
    zero_margin = TripletRankingLoss(margin=0.0)(TRIPLET_IMAGES, TRIPLET_TEXTS)
    assert zero_margin["loss"].item() == pytest.approx(0.04, abs=1e-6)
    image = TRIPLET_IMAGES.clone().requires_grad_(True)
    TripletRankingLoss()(image, TRIPLET_TEXTS)["loss"].backward()
    # d/d image_i of Σ [0.2 - s_00 + s_i0]_+ over violating i in {1, 2}: +t1 for images 1
    # and 2, -2·t1 for image 0 (its positive appears in both violations)
    t1 = TRIPLET_TEXTS[0]
    torch.testing.assert_close(image.grad, torch.stack([-2 * t1, t1, t1]))


def test_create_loss_reads_config() -> None:
    assert set(LOSSES.names()) >= {"infonce", "triplet"}
    loss = create_loss(LossConfig(name="triplet", margin=0.3, hardest_negative=True,
                                  global_batch=True), rank=1, world_size=4)
    assert isinstance(loss, TripletRankingLoss)
    assert (loss.margin, loss.hardest_negative, loss.global_batch) == (0.3, True, True)
    assert (loss.rank, loss.world_size) == (1, 4)
    nce = create_loss(LossConfig(lambda_i2t=0.3, lambda_t2i=0.7))
    assert (nce.lambda_i2t, nce.lambda_t2i) == (0.3, 0.7)
    with pytest.raises(KeyError, match="valid: infonce"):
        create_loss(LossConfig(name="nope"))


# ---------------------------------------------------------------------------------------
# Global batch: 2 gloo ranks on loopback == one process on the concatenated batch
# ---------------------------------------------------------------------------------------

N, DIM, WORLD = 6, 5, 2


def _features() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    image = torch.nn.functional.normalize(torch.randn(N, DIM, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(N, DIM, generator=g), dim=-1)
    return image, text


def _losses(rank: int, world_size: int) -> dict[str, torch.nn.Module]:
    return {
        "infonce": SymmetricInfoNCE(0.3, 0.7, global_batch=True, rank=rank, world_size=world_size),
        "triplet": TripletRankingLoss(0.2, False, global_batch=True, rank=rank,
                                      world_size=world_size),
        "triplet_hard": TripletRankingLoss(0.2, True, global_batch=True, rank=rank,
                                           world_size=world_size),
    }


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        image, text = _features()
        per = N // WORLD
        results = {}
        for name, loss in _losses(rank, WORLD).items():
            local_i = image[rank * per:(rank + 1) * per].clone().requires_grad_(True)
            local_t = text[rank * per:(rank + 1) * per].clone().requires_grad_(True)
            out = loss(local_i, local_t, torch.tensor(1 / 0.07))
            out["loss"].backward()
            results[name] = (out["loss"].detach(), local_i.grad, local_t.grad)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # rank 0 hosts the store: nobody tears down while another still talks
    finally:
        dist.destroy_process_group()


def test_global_batch_equals_single_process(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(free_ports(1)[0], str(tmp_path)), nprocs=WORLD, join=True)
    image, text = _features()
    per = N // WORLD
    for name, loss in _losses(0, 1).items():  # world_size 1: no gather, the whole batch
        full_i, full_t = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
        full = loss(full_i, full_t, torch.tensor(1 / 0.07))
        full["loss"].backward()
        for rank in range(WORLD):
            r_loss, r_gi, r_gt = torch.load(tmp_path / f"rank{rank}.pt")[name]
            torch.testing.assert_close(r_loss, full["loss"].detach(), msg=name)
            # all_gather's backward sums every rank's (identical) loss gradient into each
            # rank's slice: world_size × the single-process gradient. DDP's averaging over
            # the ranks then gives exactly the single-process gradient of the parameters.
            rows = slice(rank * per, (rank + 1) * per)
            torch.testing.assert_close(r_gi, WORLD * full_i.grad[rows], msg=name)
            torch.testing.assert_close(r_gt, WORLD * full_t.grad[rows], msg=name)


def test_training_step_loss_matches_the_loss_and_step_clamps_temperature() -> None:
    import numpy as np

    from rsir.config import ModelConfig, TowerConfig
    from rsir.models import create_model
    from rsir.training_step import MAX_LOGIT_SCALE, batch_inputs, contrastive_loss, optimizer_step

    tiny = TowerConfig("open_clip", {"model_name": "rsir-tiny"})
    torch.manual_seed(0)
    model = create_model(ModelConfig(image_tower=tiny, text_tower=tiny, embed_dim=32))
    loss_fn = create_loss(LossConfig())
    batch = {"image": np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32),
             "text": ["a red roof", "two trees", "a road", "a pool"]}
    inputs = batch_inputs(model, batch, "image", torch.device("cpu"))
    losses = contrastive_loss(model, loss_fn, inputs)
    out = model(dict(inputs))
    direct = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])["loss"]
    assert float(losses["loss"]) == pytest.approx(float(direct), rel=1e-6)
    losses["loss"].backward()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # as if a step had pushed τ below 0.01
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer_step(model, opt, grad_clip_norm=0.1)
    assert float(model.logit_scale) == pytest.approx(MAX_LOGIT_SCALE)
    assert all(p.grad is None for p in model.parameters())
