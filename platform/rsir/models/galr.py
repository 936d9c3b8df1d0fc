"""GaLR: cross-modal RS text-image retrieval from global and local information (Yuan et al.).

Image side ``v = MIDF(v_g, v_l)``:

* global ``v_g``: a CNN (torchvision ResNet-18 with ``weights=None`` / a local weights
  file, or a small from-scratch CNN) with multi-level visual self-attention (MVSA), eq. 3;
* local ``v_l``: a GCN (eq. 11, torch_geometric ``DenseGCNConv``) over the image's
  detected objects, whose graph is built by DREA (eqs. 12-18);
* MIDF (eqs. 19-24): self-attention, guided attention, the mask / supplement step and a
  softmax gate of dynamic weights.

Text side: the bi-GRU encoder of :mod:`rsir.models.galr_text` (eqs. 7-10). Loss: the
triplet ranking loss (``loss: {name: triplet, margin: 0.2}``, eq. 31), owned by
:mod:`rsir.losses`.

Objects: the data pipeline turns each row's ``objects`` (``[{box, category, score}]``,
boxes as fractions) into padded tensors with :func:`collate_objects`, which also runs DREA
(merge + boosted adjacency). The padded format, ``M = max_objects`` slots per image, nodes
sorted by area (largest first), padding after the real nodes:

=================== ============ =========================================================
object_boxes        [B, M, 4]    x0, y0, x1, y1 (fractions); a merged node: union of boxes
object_centers      [B, M, 2]    node centre (eq. 14: merged centre = mean of the two)
object_areas        [B, M]       fraction of the image (eq. 15: merged area = sum)
object_scores       [B, M]       detector confidence (eq. 16: merged score = max)
object_categories   [B, M] long  1 + index in ``options.categories``; 0 = unknown / padding
object_members      [B, M] long  how many detections a node merges (0 on padding)
object_mask         [B, M] bool  real node
object_adjacency    [B, M, M]    DREA adjacency ``d^_A`` (eq. 18); zero on padding
=================== ============ =========================================================

``GaLR.forward(batch)`` reads ``batch["image"]``, ``batch["tokens"]`` and the object
tensors, either nested as ``batch["objects"]`` (that dict) or flat at the top level of the
batch (Ray Data batches are flat). ``batch["objects"]`` may also be the raw list of
per-image object lists; the model then collates them itself. Missing objects read as an
image with no objects.

What is taken from the authors' code (github.com/xiaoyuan1996/GaLR, ``layers/GaLR.py``,
``layers/GaLR_utils.py``) where the paper leaves it open:

* MVSA (``VSA_Module``/``ExtractFeature``): low = cat(f1, up2(f2)), high = cat(f3, up2(f4));
  a 3x3/stride-4 conv and a 1x1 conv bring both to 3 channels at the f3 grid; their concat
  plus the channel-mean of ``high`` (residual) gives, through two 1x1 convs, a map times a
  sigmoid attention map; a linear layer of the flattened product, sigmoided, gates the
  projected pooled f4 (``solo_feature``); the result is L2-normalised.
* GCN (``GCN``): three layers of widths d -> d -> d/2 -> d with ReLU, readout by
  flattening the ``max_objects`` node slots into one linear layer, L2-normalised. The code
  uses ``A @ X`` with a precomputed matrix; here eq. 11's ``D~^-1/2 (A + I) D~^-1/2`` is
  used (``DenseGCNConv``, which clamps degrees below 1 to 1). The authors' 20 slots and
  20-d precomputed node vectors become ``max_objects`` (default 20) and a learned
  embedding of (centre, area, score) plus a category embedding.
* MIDF (``Fusion_MIDF`` with MCAN's ``SA``/``SGA``): both features enter the attention
  blocks as length-1 sequences (so the attention softmax is 1 and each block reduces to a
  value projection, residual + LayerNorm and an FFN); hidden size = embed_dim, 8 heads,
  FFN 2 x embed_dim, attention dropout 0.1; dynamic weights ``Linear -> Sigmoid ->
  Dropout(0.2) -> Linear(., 2) -> Softmax``. Where code and paper differ the paper is
  followed: eq. 20 guides both features from the SA outputs (the code updates the local
  one first and guides the global one with it), and eq. 24 weights v'_l with gamma_2 (the
  code uses gamma_1 for both).
* DREA itself is not in the released code (the repository ships precomputed matrices);
  it follows eqs. 12-18 as documented on each function below.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsir.config import LossConfig, ModelConfig
from rsir.models.galr_text import BiGRUTextEncoder, WordVocab, load_vocab
from rsir.models.registry import MODEL_FIELDS, MODELS

log = logging.getLogger(__name__)

# DOTA-v1.0 classes: the paper's detector (PP-YOLO) was pre-trained on DOTA.
DOTA_CATEGORIES = (
    "plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
    "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter",
    "roundabout", "soccer-ball-field", "swimming-pool",
)

OBJECT_KEYS = (
    "object_boxes", "object_centers", "object_areas", "object_scores", "object_categories",
    "object_members", "object_mask", "object_adjacency",
)


# =======================================================================================
# DREA: denoised representation matrix and enhanced adjacency matrix (eqs. 12-18)
# =======================================================================================


def adjacency_distance(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 12: ``d_A(x, y) = exp(-||x-y||^2) * (1 - ||x-y||^2)`` for all pairs.

    ``a``: ``[..., N, 2]`` centres (fractions of width/height), ``b``: ``[..., K, 2]``
    (default ``a``) -> ``[..., N, K]``. 1 at distance 0, 0 at distance 1, slightly
    negative beyond (minimum ``-exp(-2)`` at squared distance 2); kept as the paper has it.
    """
    b = a if b is None else b
    sq = ((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2).sum(-1)
    return torch.exp(-sq) * (1.0 - sq)


def merge_threshold_distance(threshold: float = 0.8) -> float:
    """The squared centre distance below which ``d_A > threshold`` (bisection; d_A decreases)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if math.exp(-mid) * (1 - mid) > threshold:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class ObjectGraph:
    """One image's objects after DREA, sorted by area (largest first)."""

    boxes: np.ndarray  # [N, 4]
    centers: np.ndarray  # [N, 2]
    areas: np.ndarray  # [N]
    scores: np.ndarray  # [N]
    categories: list  # [N] category labels as given (str or int)
    members: list[list[int]]  # indices of the input objects each node merges
    adjacency: np.ndarray  # [N, N] d^_A (eq. 18), or d_A when boost is None

    def __len__(self) -> int:
        return len(self.areas)


def box_centers_areas(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 4]`` boxes (x0, y0, x1, y1 fractions) -> centres ``[N, 2]``, areas ``[N]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centers = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    areas = np.abs(boxes[:, 2] - boxes[:, 0]) * np.abs(boxes[:, 3] - boxes[:, 1])
    return centers, areas


def merge_objects(
    boxes: np.ndarray,
    categories: Sequence,
    scores: Sequence[float] | None = None,
    threshold: float = 0.8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list, list[list[int]]]:
    """Eqs. 13-16: merge every pair of same-category objects whose ``d_A`` exceeds ``threshold``.

    Filtration factor ``f(x, y) = 1[d_A(x, y) > threshold] * 1[cate_x == cate_y]`` (eq. 13).
    Merging x and y gives z with centre = mean of the two centres (eq. 14), area = sum of
    the two areas (eq. 15), score = max (eq. 16); z's box is the union of the two boxes.
    The paper applies this "to every pair"; made deterministic here: repeatedly merge the
    pair with the largest ``d_A`` (ties: lowest indices) into the lower index, until no
    pair qualifies (so chains of near objects collapse into one node, and z is compared
    again with the rest). Returns (boxes, centres, areas, scores, categories, members) in
    input order of the surviving nodes.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    n = len(boxes)
    centers, areas = box_centers_areas(boxes)
    scores_arr = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float64).copy()
    cats = list(categories)
    if len(cats) != n or len(scores_arr) != n:
        raise ValueError(f"merge_objects: {n} boxes, {len(cats)} categories, "
                         f"{len(scores_arr)} scores")
    codes: dict[Any, int] = {}
    code = np.asarray([codes.setdefault(c, len(codes)) for c in cats], dtype=np.int64)
    members = [[i] for i in range(n)]
    alive = list(range(n))
    while len(alive) > 1:
        idx = np.asarray(alive)
        d = adjacency_distance(torch.from_numpy(centers[idx])).numpy()
        same = code[idx][:, None] == code[idx][None, :]
        cand = np.triu(same & (d > threshold), k=1)
        if not cand.any():
            break
        d_c = np.where(cand, d, -np.inf)
        a, b = np.unravel_index(int(np.argmax(d_c)), d_c.shape)  # first max: lowest (a, b)
        i, j = alive[a], alive[b]
        centers[i] = (centers[i] + centers[j]) / 2  # eq. 14
        areas[i] = areas[i] + areas[j]  # eq. 15
        scores_arr[i] = max(scores_arr[i], scores_arr[j])  # eq. 16
        boxes[i] = [min(boxes[i, 0], boxes[j, 0]), min(boxes[i, 1], boxes[j, 1]),
                    max(boxes[i, 2], boxes[j, 2]), max(boxes[i, 3], boxes[j, 3])]
        members[i] = members[i] + members[j]
        alive.remove(j)
    idx = np.asarray(alive, dtype=np.int64)
    return (boxes[idx], centers[idx], areas[idx], scores_arr[idx], [cats[i] for i in idx],
            [members[i] for i in idx])


def area_ranks(areas: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 17: 1-based rank of each object by area, largest first (ties: lower index first).

    ``areas`` ``[..., N]``; padded slots (``mask`` False) rank after every real object.
    """
    key = areas.to(torch.float64)
    if mask is not None:
        key = key.masked_fill(~mask, -math.inf)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(1, order.shape[-1] + 1, device=order.device)
                   .expand_as(order).contiguous())
    return ranks


def boosted_adjacency(
    centers: torch.Tensor,
    areas: torch.Tensor,
    boost: float | None = 1.15,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 18: ``d^_A(obj_m, obj_n) = D * exp(1 - sqrt(m * n)) * d_A(obj_m, obj_n)``.

    ``m``, ``n`` are the area ranks of eq. 17 (1 = largest), ``D`` the relationship boost
    factor (1.15 in the paper): only relations of the largest object with itself are
    raised (``D * exp(0) = 1.15``); pair (1, 2) gets ``1.15 * exp(1 - sqrt 2) = 0.76``,
    and the gain falls with both ranks. The diagonal is the
    formula at ``x = y`` (``d_A = 1``), i.e. ``D * exp(1 - m)``: eq. 11 then adds ``I``.
    ``boost=None`` returns plain ``d_A`` (the paper's "LF w/o DREA"). Batched: ``centers``
    ``[..., N, 2]``, ``areas`` ``[..., N]``; rows and columns of padded slots are 0.
    """
    d = adjacency_distance(centers)
    if boost is not None:
        r = area_ranks(areas, mask).to(d.dtype)
        gain = boost * torch.exp(1.0 - torch.sqrt(r.unsqueeze(-1) * r.unsqueeze(-2)))
        d = d * gain
    if mask is not None:
        m = mask.to(d.dtype)
        d = d * m.unsqueeze(-1) * m.unsqueeze(-2)
    return d


def drea_adjacency(
    boxes: np.ndarray | Sequence[Sequence[float]],
    categories: Sequence,
    scores: Sequence[float] | None = None,
    threshold: float | None = 0.8,
    boost: float | None = 1.15,
) -> ObjectGraph:
    """DREA for one image: merge (eqs. 13-16, skipped when ``threshold`` is None), sort the
    nodes by area (largest first), and build the boosted adjacency (eqs. 12, 17, 18)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if threshold is None:
        centers, areas = box_centers_areas(boxes)
        scores_arr = np.ones(len(boxes)) if scores is None else np.asarray(scores, np.float64)
        cats, members = list(categories), [[i] for i in range(len(boxes))]
    else:
        boxes, centers, areas, scores_arr, cats, members = merge_objects(
            boxes, categories, scores, threshold)
    order = np.argsort(-areas, kind="stable")
    boxes, centers, areas, scores_arr = boxes[order], centers[order], areas[order], scores_arr[order]
    cats, members = [cats[i] for i in order], [members[i] for i in order]
    adj = boosted_adjacency(torch.from_numpy(centers), torch.from_numpy(areas), boost).numpy()
    return ObjectGraph(boxes, centers, areas, scores_arr, cats, members, adj)


# =======================================================================================
# Collation: per-image object lists -> padded tensors
# =======================================================================================


def _object_fields(obj: Any) -> tuple[list[float], Any, float]:
    if isinstance(obj, Mapping):
        box, cat, score = obj.get("box"), obj.get("category"), obj.get("score")
    else:  # (box, category, score) tuples
        box, cat, score = obj
    box = [float(v) for v in np.asarray(box, dtype=np.float64).reshape(4)]
    box = [min(max(v, 0.0), 1.0) for v in box]
    x0, x1 = sorted((box[0], box[2]))
    y0, y1 = sorted((box[1], box[3]))
    return [x0, y0, x1, y1], cat, 1.0 if score is None else float(score)


def collate_objects(
    object_lists: Iterable[Iterable[Any] | None],
    category_vocab: Sequence[str] | Mapping[str, int],
    max_objects: int = 20,
    threshold: float | None = 0.8,
    boost: float | None = 1.15,
) -> dict[str, torch.Tensor]:
    """Each image's ``[{box, category, score}, ...]`` -> the padded tensors (module docstring).

    Pure function for the data pipeline. Per image: DREA (merge same-category objects with
    ``d_A > threshold``, boosted adjacency with factor ``boost``; ``None`` disables either),
    nodes sorted by area, largest first; beyond ``max_objects`` nodes the smallest are
    dropped (the adjacency is rebuilt over the kept ones). ``category_vocab``: the list of
    category names (index i -> id i + 1) or a ``{name: id}`` map with ids from 1; categories
    not in it get id 0. ``None`` or an empty list is an image with no objects.
    """
    if isinstance(category_vocab, Mapping):
        cat_ids = {str(k): int(v) for k, v in category_vocab.items()}
    else:
        cat_ids = {str(c): i + 1 for i, c in enumerate(category_vocab)}
    lists = [list(objs) if objs is not None else [] for objs in object_lists]
    b, m = len(lists), max_objects
    out = {
        "object_boxes": torch.zeros(b, m, 4),
        "object_centers": torch.zeros(b, m, 2),
        "object_areas": torch.zeros(b, m),
        "object_scores": torch.zeros(b, m),
        "object_categories": torch.zeros(b, m, dtype=torch.long),
        "object_members": torch.zeros(b, m, dtype=torch.long),
        "object_mask": torch.zeros(b, m, dtype=torch.bool),
        "object_adjacency": torch.zeros(b, m, m),
    }
    for i, objs in enumerate(lists):
        if not objs:
            continue
        fields = [_object_fields(o) for o in objs]
        boxes = np.asarray([f[0] for f in fields], dtype=np.float64)
        cats = [str(f[1]) for f in fields]
        g = drea_adjacency(boxes, cats, [f[2] for f in fields], threshold, boost)
        k = min(len(g), m)
        adj = g.adjacency
        if len(g) > m:  # ranks change once the small ones are gone
            adj = boosted_adjacency(torch.from_numpy(g.centers[:k]),
                                    torch.from_numpy(g.areas[:k]), boost).numpy()
        out["object_boxes"][i, :k] = torch.from_numpy(g.boxes[:k])
        out["object_centers"][i, :k] = torch.from_numpy(g.centers[:k])
        out["object_areas"][i, :k] = torch.from_numpy(g.areas[:k])
        out["object_scores"][i, :k] = torch.from_numpy(g.scores[:k])
        out["object_categories"][i, :k] = torch.tensor([cat_ids.get(c, 0) for c in g.categories[:k]])
        out["object_members"][i, :k] = torch.tensor([len(mm) for mm in g.members[:k]])
        out["object_mask"][i, :k] = True
        out["object_adjacency"][i, :k, :k] = torch.from_numpy(adj[:k, :k])
    return out


def empty_objects(batch_size: int, max_objects: int, device: torch.device | None = None) -> dict:
    """The padded tensors of ``batch_size`` images with no objects."""
    out = collate_objects([[]] * batch_size, [], max_objects)
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


# =======================================================================================
# Global branch: CNN + MVSA
# =======================================================================================


class TinyCNN(nn.Module):
    """A small from-scratch 4-stage CNN with ResNet-18's strides (f1..f4 at 1/4..1/32)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        w = list(widths)
        if len(w) != 4:
            raise ValueError(f"tiny CNN: widths needs 4 values, got {w}")

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.stem = nn.Sequential(block(in_channels, w[0], 2), nn.MaxPool2d(3, 2, 1))
        self.layer1 = block(w[0], w[0], 1)
        self.layer2 = block(w[0], w[1], 2)
        self.layer3 = block(w[1], w[2], 2)
        self.layer4 = block(w[2], w[3], 2)
        self.widths = tuple(w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return f1, f2, f3, self.layer4(f3)


class ResNet18Features(nn.Module):
    """torchvision ResNet-18 (``weights=None``; optional local state-dict file), f1..f4."""

    def __init__(self, weights_path: str | None = None, in_channels: int = 3) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if weights_path:
            path = Path(weights_path)
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights {path}: no such file")
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state))
            missing, unexpected = net.load_state_dict(state, strict=False)
            log.info("resnet18 weights from %s (missing %d, unexpected %d)", path,
                     len(missing), len(unexpected))
        if in_channels != 3:
            conv = net.conv1
            weight = conv.weight.data
            mean = weight.mean(dim=1, keepdim=True)
            new = torch.cat([weight[:, : min(3, in_channels)]]
                            + [mean] * max(0, in_channels - 3), dim=1) * (3.0 / in_channels)
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            net.conv1.weight.data.copy_(new)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)
        self.widths = (64, 128, 256, 512)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return f1, f2, f3, self.layer4(f3)


def _resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-2:] == ref.shape[-2:] else F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class MVSA(nn.Module):
    """Multi-level visual self-attention (AMFMN's VSA module, as in the authors' code).

    low = cat(f1, up2(f2)), high = cat(f3, up2(f4)); both to ``ms_channels`` channels on
    the f3 grid; ``c = cat(low', high') + mean_channels(high')``; map = conv1x1(c) *
    sigmoid(conv1x1'(c)); ``v_g = l2norm(Linear(mean(f4)) * sigmoid(Linear(flatten(map))))``.
    ``grid`` is the f3 grid size at the configured image size; other sizes are pooled to it.
    """

    def __init__(self, widths: Sequence[int], embed_dim: int, grid: tuple[int, int],
                 ms_channels: int = 3, out_channels: int = 1) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.grid = tuple(grid)
        self.lf_conv = nn.Conv2d(w1 + w2, ms_channels, kernel_size=3, stride=4)
        self.hf_conv = nn.Conv2d(w3 + w4, ms_channels, kernel_size=1)
        self.main_conv = nn.Conv2d(2 * ms_channels, out_channels, kernel_size=1)
        self.attn_conv = nn.Conv2d(2 * ms_channels, out_channels, kernel_size=1)
        self.solo = nn.Linear(w4, embed_dim)
        self.solo_attention = nn.Linear(out_channels * grid[0] * grid[1], embed_dim)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3, f4 = feats
        low = torch.cat([f1, _resize_to(F.interpolate(f2, scale_factor=2.0), f1)], dim=1)
        high = torch.cat([f3, _resize_to(F.interpolate(f4, scale_factor=2.0), f3)], dim=1)
        high = self.hf_conv(high)
        low = _resize_to(self.lf_conv(low), high)
        c = torch.cat([low, high], dim=1)
        c = c + high.mean(dim=1, keepdim=True)  # residual, as the code does
        if tuple(c.shape[-2:]) != self.grid:
            c = F.adaptive_avg_pool2d(c, self.grid)
        atted = (self.main_conv(c) * torch.sigmoid(self.attn_conv(c))).flatten(1)
        solo = self.solo(f4.mean(dim=(2, 3)))
        return F.normalize(solo * torch.sigmoid(self.solo_attention(atted)), dim=-1)


class GlobalBranch(nn.Module):
    """``v_g = C_mask(I)`` (eq. 3): backbone features -> MVSA."""

    def __init__(self, backbone: str = "resnet18", embed_dim: int = 512, image_size: int = 256,
                 in_channels: int = 3, widths: Sequence[int] | None = None,
                 backbone_weights: str | None = None, ms_channels: int = 3) -> None:
        super().__init__()
        if backbone == "resnet18":
            self.backbone: nn.Module = ResNet18Features(backbone_weights, in_channels)
        elif backbone == "tiny":
            if backbone_weights:
                raise ValueError("backbone_weights applies to backbone: resnet18 only")
            self.backbone = TinyCNN(widths or (16, 32, 64, 128), in_channels)
        else:
            raise ValueError(f"GaLR backbone {backbone!r}; valid: resnet18, tiny")
        grid = self._f3_grid(image_size, in_channels)
        self.mvsa = MVSA(self.backbone.widths, embed_dim, grid, ms_channels)

    def _f3_grid(self, image_size: int, in_channels: int) -> tuple[int, int]:
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            f3 = self.backbone(torch.zeros(1, in_channels, image_size, image_size))[2]
        self.backbone.train(was_training)
        return int(f3.shape[-2]), int(f3.shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mvsa(self.backbone(images))


# =======================================================================================
# Local branch: GCN over the DREA graph
# =======================================================================================


class LocalGCN(nn.Module):
    """``v_l = G(M_A, M_R)`` (eqs. 5, 11): node embedding -> 3 GCN layers -> slot readout.

    Node input (the paper: "position, category, probability and area size ... after
    embedding"): ``Linear([cx, cy, area, score]) + Embedding(category)``. Each layer is
    ``ReLU(D~^-1/2 (A + I) D~^-1/2 X W)`` with ``A`` the DREA adjacency. Widths d, d/2, d
    and the readout (flatten the ``max_objects`` slots, which DREA orders by area, then
    one linear layer, then L2-normalise) follow the authors' ``GCN``.
    """

    def __init__(self, num_categories: int, max_objects: int = 20, node_dim: int = 64,
                 embed_dim: int = 512) -> None:
        super().__init__()
        from torch_geometric.nn.dense.dense_gcn_conv import DenseGCNConv

        self.max_objects = max_objects
        self.geometry = nn.Linear(4, node_dim)
        self.category = nn.Embedding(num_categories + 1, node_dim)  # 0 = unknown
        widths = [node_dim, node_dim, max(node_dim // 2, 1), node_dim]
        self.convs = nn.ModuleList(DenseGCNConv(a, b) for a, b in itertools.pairwise(widths))
        self.out = nn.Linear(max_objects * widths[-1], embed_dim)

    def forward(self, objects: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = objects["object_mask"]
        geo = torch.cat([objects["object_centers"], objects["object_areas"].unsqueeze(-1),
                         objects["object_scores"].unsqueeze(-1)], dim=-1)
        x = self.geometry(geo) + self.category(objects["object_categories"])
        x = x * mask.unsqueeze(-1).to(x.dtype)
        n = mask.shape[1]
        adj = objects["object_adjacency"] + torch.eye(n, dtype=x.dtype, device=x.device)
        for conv in self.convs:
            x = F.relu(conv(x, adj, mask, add_loop=False))
        return F.normalize(self.out(x.flatten(1)), dim=-1)


# =======================================================================================
# MIDF: multi-level information dynamic fusion (eqs. 19-24)
# =======================================================================================


class MHAtt(nn.Module):
    """Multi-head scaled dot-product attention (MCAN's ``MHAtt``)."""

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"MIDF: embed_dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.merge = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, v: torch.Tensor, k: torch.Tensor, q: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, d = q.shape[0], q.shape[-1]

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, self.heads, d // self.heads).transpose(1, 2)

        qh, kh, vh = split(self.q(q)), split(self.k(k)), split(self.v(v))
        scores = qh @ kh.transpose(-2, -1) / math.sqrt(d // self.heads)
        if mask is not None:  # mask: [B, Lk] True = ignore
            scores = scores.masked_fill(mask[:, None, None, :], -1e9)
        att = self.dropout(scores.softmax(dim=-1))
        return self.merge((att @ vh).transpose(1, 2).reshape(b, -1, d))


class FFN(nn.Sequential):
    def __init__(self, dim: int, ff_dim: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, ff_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(ff_dim, dim))


class SA(nn.Module):
    """Self-attention unit: ``x = LN(x + MHAtt(x, x, x)); x = LN(x + FFN(x))``."""

    def __init__(self, dim: int, heads: int = 8, ff_dim: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        self.att = MHAtt(dim, heads, dropout)
        self.ffn = FFN(dim, ff_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.drop1(self.att(x, x, x, x_mask)))
        return self.norm2(x + self.drop2(self.ffn(x)))


class GA(nn.Module):
    """Guided attention ``GA(x, y)`` (MCAN's SGA): self-attention on x, then x attends to y."""

    def __init__(self, dim: int, heads: int = 8, ff_dim: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_att = MHAtt(dim, heads, dropout)
        self.guided_att = MHAtt(dim, heads, dropout)
        self.ffn = FFN(dim, ff_dim, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = (nn.Dropout(dropout), nn.Dropout(dropout),
                                              nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_mask: torch.Tensor | None = None,
                y_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.drop1(self.self_att(x, x, x, x_mask)))
        x = self.norm2(x + self.drop2(self.guided_att(y, y, x, y_mask)))
        return self.norm3(x + self.drop3(self.ffn(x)))


class MIDF(nn.Module):
    """Eqs. 19-24.

    ``v_g^SA = SA(v_g)``, ``v_l^SA = SA(v_l)`` (19); ``v_g^SGA = GA(v_g^SA, v_l^SA)``,
    ``v_l^SGA = GA(v_l^SA, v_g^SA)`` (20); mask / supplement
    ``v'_g = v_g^SGA * sigmoid(v_l^SGA)``, ``v'_l = v_l^SGA + v_g^SGA`` (21);
    ``v_mix = v'_g + v'_l`` (22); dynamic weights
    ``gamma_1, gamma_2 = Softmax(sigmoid(v_mix W_a) W_b)`` (23), per sample, summing to 1;
    ``v = gamma_1 v'_g + gamma_2 v'_l`` (24).
    """

    def __init__(self, dim: int, heads: int = 8, ff_dim: int | None = None,
                 dropout: float = 0.1, dynamic_dim: int | None = None,
                 dynamic_dropout: float = 0.2) -> None:
        super().__init__()
        ff_dim = ff_dim or 2 * dim
        dynamic_dim = dynamic_dim or dim
        self.sa_global = SA(dim, heads, ff_dim, dropout)
        self.sa_local = SA(dim, heads, ff_dim, dropout)
        self.ga_global = GA(dim, heads, ff_dim, dropout)  # global guided by local
        self.ga_local = GA(dim, heads, ff_dim, dropout)  # local guided by global
        self.w_alpha = nn.Linear(dim, dynamic_dim)
        self.dynamic_dropout = nn.Dropout(dynamic_dropout)
        self.w_beta = nn.Linear(dynamic_dim, 2)

    def parts(self, v_g: torch.Tensor, v_l: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate of eqs. 19-24 (``[B, D]`` each; ``gamma`` is ``[B, 2]``)."""
        g, loc = v_g.unsqueeze(1), v_l.unsqueeze(1)  # length-1 sequences, as the code does
        g_sa, l_sa = self.sa_global(g), self.sa_local(loc)
        g_sga, l_sga = self.ga_global(g_sa, l_sa), self.ga_local(l_sa, g_sa)
        g_sga, l_sga = g_sga.squeeze(1), l_sga.squeeze(1)
        g_p = g_sga * torch.sigmoid(l_sga)
        l_p = l_sga + g_sga
        mix = g_p + l_p
        gamma = self.w_beta(self.dynamic_dropout(torch.sigmoid(self.w_alpha(mix)))).softmax(-1)
        v = gamma[:, 0:1] * g_p + gamma[:, 1:2] * l_p
        return {"v_g_sa": g_sa.squeeze(1), "v_l_sa": l_sa.squeeze(1), "v_g_sga": g_sga,
                "v_l_sga": l_sga, "v_g_prime": g_p, "v_l_prime": l_p, "v_mix": mix,
                "gamma": gamma, "v": v}

    def forward(self, v_g: torch.Tensor, v_l: torch.Tensor) -> torch.Tensor:
        return self.parts(v_g, v_l)["v"]


class AddFusion(nn.Module):
    """The ablation without MIDF: ``v = w_g v_g + w_l v_l`` with fixed weights (Table II)."""

    def __init__(self, global_weight: float = 0.5, local_weight: float = 0.5) -> None:
        super().__init__()
        self.global_weight, self.local_weight = global_weight, local_weight

    def forward(self, v_g: torch.Tensor, v_l: torch.Tensor) -> torch.Tensor:
        return self.global_weight * v_g + self.local_weight * v_l


# =======================================================================================
# The model
# =======================================================================================


class GaLR(nn.Module):
    """GaLR retrieval model with the rsir retrieval-model interface (see module docstring)."""

    def __init__(
        self,
        vocab: WordVocab,
        categories: Sequence[str] = DOTA_CATEGORIES,
        embed_dim: int = 512,
        # global branch
        backbone: str = "resnet18",
        backbone_weights: str | None = None,
        widths: Sequence[int] | None = None,
        in_channels: int = 3,
        image_size: int = 256,
        ms_channels: int = 3,
        # local branch + DREA (``local_branch=False``: the global branch alone, the ablation)
        local_branch: bool = True,
        max_objects: int = 20,
        node_dim: int = 64,
        merge_threshold: float | None = 0.8,
        boost: float | None = 1.15,
        # fusion
        fusion: str = "midf",
        heads: int = 8,
        ff_dim: int | None = None,
        attn_dropout: float = 0.1,
        dynamic_dim: int | None = None,
        dynamic_dropout: float = 0.2,
        global_weight: float = 0.5,
        local_weight: float = 0.5,
        # text
        word_dim: int = 300,
        text_hidden: int = 512,
        text_layers: int = 1,
        text_dropout: float = 0.0,
        max_words: int = 48,
        # similarity scale (used by contrastive losses only; the triplet loss ignores it)
        temperature: float = 0.07,
        learnable_temperature: bool = False,
    ) -> None:
        super().__init__()
        self.categories = [str(c) for c in categories]
        self.max_objects = max_objects
        self.merge_threshold = merge_threshold
        self.boost = boost
        self.global_branch = GlobalBranch(backbone, embed_dim, image_size, in_channels, widths,
                                          backbone_weights, ms_channels)
        self.local_branch = (LocalGCN(len(self.categories), max_objects, node_dim, embed_dim)
                             if local_branch else None)
        if fusion not in ("midf", "add"):
            raise ValueError(f"GaLR fusion {fusion!r}; valid: midf, add")
        self.fusion: nn.Module | None = None  # nothing to fuse without the local branch
        if local_branch and fusion == "midf":
            self.fusion = MIDF(embed_dim, heads, ff_dim, attn_dropout, dynamic_dim, dynamic_dropout)
        elif local_branch:
            self.fusion = AddFusion(global_weight, local_weight)
        self.text_encoder = BiGRUTextEncoder(vocab, embed_dim, word_dim, text_hidden,
                                             text_layers, text_dropout, max_words)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)),
                                        requires_grad=learnable_temperature)
        self.embed_dim = embed_dim

    # -- objects --------------------------------------------------------------------------

    def collate_objects(self, object_lists: Iterable[Iterable[Any] | None]) -> dict[str, torch.Tensor]:
        """:func:`collate_objects` with this model's categories, slots and DREA settings."""
        return collate_objects(object_lists, self.categories, self.max_objects,
                               self.merge_threshold, self.boost)

    def _objects(self, objects: Any, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        if objects is None:
            return empty_objects(batch_size, self.max_objects, device)
        if not isinstance(objects, Mapping):  # raw per-image object lists
            objects = self.collate_objects(objects)
        missing = [k for k in ("object_mask", "object_centers", "object_areas",
                               "object_scores", "object_categories") if k not in objects]
        if missing:
            raise KeyError(f"GaLR objects: missing {missing}; build them with collate_objects")
        out = {k: torch.as_tensor(objects[k]).to(device) for k in OBJECT_KEYS if k in objects}
        out["object_mask"] = out["object_mask"].bool()
        out["object_categories"] = out["object_categories"].long()
        for k in ("object_centers", "object_areas", "object_scores"):
            out[k] = out[k].float()
        if "object_adjacency" not in out:  # DREA boost without merging, from the tensors
            out["object_adjacency"] = boosted_adjacency(
                out["object_centers"], out["object_areas"], self.boost, out["object_mask"])
        out["object_adjacency"] = out["object_adjacency"].float()
        return self._fit_slots(out)

    def _fit_slots(self, objects: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pad or cut the object slots to ``max_objects`` (the readout needs a fixed count)."""
        m, k = self.max_objects, objects["object_mask"].shape[1]
        if k == m:
            return objects
        if k > m:
            raise ValueError(f"GaLR: batch has {k} object slots, model takes {m} "
                             "(collate with max_objects = options.max_objects)")
        out = {}
        for name, t in objects.items():
            if name == "object_adjacency":
                out[name] = F.pad(t, (0, m - k, 0, m - k))
            else:
                pad = [0, 0] * (t.dim() - 2) + [0, m - k]
                out[name] = F.pad(t, pad)
        return out

    # -- the retrieval-model interface ---------------------------------------------------

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.text_encoder.tokenize(texts)

    def encode_image_parts(self, images: torch.Tensor, objects: Any = None) -> dict[str, torch.Tensor]:
        """``{"global": v_g, "local": v_l, "fused": v}`` (unnormalised ``v``); without a local
        branch ``{"global": v_g, "fused": v_g}``."""
        v_g = self.global_branch(images)
        if self.local_branch is None:
            return {"global": v_g, "fused": v_g}
        objs = self._objects(objects, images.shape[0], images.device)
        v_l = self.local_branch(objs)
        return {"global": v_g, "local": v_l, "fused": self.fusion(v_g, v_l)}

    def encode_image(self, images: torch.Tensor, objects: Any = None,
                     normalize: bool = True) -> torch.Tensor:
        """``[B, C, H, W]`` + the batch's objects -> ``[B, E]``."""
        v = self.encode_image_parts(images, objects)["fused"]
        return F.normalize(v, dim=-1) if normalize else v

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        t = self.text_encoder(tokens)
        return F.normalize(t, dim=-1) if normalize else t

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Batch keys: ``image``, ``tokens``, and ``objects`` (or the flat ``object_*`` keys)."""
        objects = batch.get("objects")
        if objects is None and "object_mask" in batch:
            objects = {k: batch[k] for k in OBJECT_KEYS if k in batch}
        return {
            "image_features": self.encode_image(batch["image"], objects),
            "text_features": self.encode_text(batch["tokens"]),
            "logit_scale": self.logit_scale.exp(),
        }


def _galr_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``options`` against GaLR's keyword arguments (plus ``vocab``, ``vocab_buckets``)."""
    params = set(inspect.signature(GaLR.__init__).parameters) - {"self", "embed_dim",
                                                                 "temperature",
                                                                 "learnable_temperature"}
    valid = sorted(params | {"vocab_buckets"})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"model 'galr' has no option {unknown[0]!r}; valid: {', '.join(valid)}")
    return dict(options)


@MODEL_FIELDS.register("galr")
def galr_fields(cfg: ModelConfig) -> tuple[str, ...]:
    """The local branch reads each row's detected ``objects``; the global branch alone reads none."""
    return ("objects",) if cfg.options.get("local_branch", True) else ()


@MODELS.register("galr")
def build_galr(cfg: ModelConfig, loss: LossConfig) -> GaLR:
    """GaLR from ``cfg.options`` (GaLR's keyword arguments); ``embed_dim`` is ``cfg.embed_dim``.

    ``options.vocab``: a vocab file (GaLR JSON or one word per line), an inline list of
    words, or absent/null for a hashed vocabulary of ``options.vocab_buckets`` (8192)
    buckets. ``options.categories``: the object category names (default: DOTA-v1.0's 15).
    The temperature is learnable only for contrastive losses (``loss.name != "triplet"``).
    The tower/fusion/head fields of ``ModelConfig`` do not apply to GaLR.
    """
    opts = _galr_kwargs(cfg.options)
    vocab = load_vocab(opts.pop("vocab", None), int(opts.pop("vocab_buckets", 8192)))
    return GaLR(
        vocab=vocab,
        embed_dim=cfg.embed_dim,
        temperature=loss.temperature,
        learnable_temperature=loss.learnable_temperature and loss.name != "triplet",
        **opts,
    )
