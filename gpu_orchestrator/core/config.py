"""The orchestrator application's arguments (serve_config.yaml `args`), validated at build time.

Pure: no Ray, no I/O (runtime_env files are read where the app is built, serve/app.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gpu_orchestrator.core.apps import AppKind, AppSpec, format_pydantic_error
from gpu_orchestrator.core.costs import CostsSpec


class ConfigError(ValueError):
    """Invalid orchestrator config; the message names every bad field."""


class DemoSpec(BaseModel):
    """What a model becomes in the demo profile: its `init` replaced (typically `demo: true`, a tiny
    untrained model built locally) and, optionally, a lighter runtime_env. No GPU share, no VRAM."""

    model_config = ConfigDict(extra="forbid")

    init: dict[str, Any] = Field(default_factory=lambda: {"demo": True})
    runtime_env: str | dict[str, Any] | None = None


class ModelSpec(BaseModel):
    """One model deployment: which class runs it and with what resources and environment."""

    model_config = ConfigDict(extra="forbid")

    impl: str = Field(description="import path of the undecorated deployment class, module:Class")
    init: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the class")
    num_replicas: int = Field(default=1, ge=0)
    num_cpus: float = Field(default=0.1, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    max_ongoing_requests: int = Field(default=8, ge=1)
    # Path (relative to the config file's directory or the CWD) of a runtime_envs/*.yaml, or inline.
    runtime_env: str | dict[str, Any] | None = None
    # GPU arbiter inputs (used when `arbiter.enabled`): declared VRAM (its only home: apps name the
    # model), expected load time until measured, pinning, replica cap, idle TTL override.
    vram_gb: float = Field(default=0.0, ge=0)
    load_s: float = Field(default=10.0, ge=0)
    pin: str | None = Field(default=None, description="GPU pool id or node type this model may only use")
    max_replicas: int = Field(default=1, ge=1)
    idle_ttl_s: float | None = Field(default=None, ge=0)
    # How much of the GPU its jobs leave to others (0..1; docs/arbiter.md): 0, the default, a job
    # saturates the GPU, and a job of another model beside it makes both take about twice as long
    # (a GPU time-slices); 0.5, two such jobs run side by side at full speed. The simulator and
    # bench/scheduler.py charge for sharing by it.
    overlap: float = Field(default=0.0, ge=0, le=1)
    # Extra Ray custom resources for the replica actor (e.g. {"accelerator_type:H100": 0.001}).
    resources: dict[str, float] = Field(default_factory=dict)
    # The GPU it runs on, for its cost (costs.local_per_gpu_hour); unset: costs.local_gpu_type.
    gpu_type: str | None = None
    demo: DemoSpec | None = Field(default=None, description="overrides for the demo profile")

    @model_validator(mode="after")
    def _impl(self) -> "ModelSpec":
        if ":" not in self.impl:
            raise ValueError(f"impl {self.impl!r} must be 'module:Class'")
        return self


# The most one gRPC message between Serve's replicas (and from its proxy) may carry: a job's params,
# its result, a page of jobs. gRPC's own default, 4 MiB, would fail a long transcript or a big body.
# The router and the models set it in their runtime_envs (serve/app.py), the Ray head `up` starts for
# its proxy (ops/ingress.py).
GRPC_MAX_MESSAGE_BYTES = 512 * 1024 * 1024


class RouterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.1, ge=0)
    max_ongoing_requests: int = Field(default=1000, ge=1)
    # A claimed job's lease; the dispatcher renews it every lease_s/3. A router that dies holding
    # jobs loses them to another replica (or its restarted self) once the lease expires.
    lease_s: float = Field(default=30.0, gt=0)
    # How often an idle dispatcher looks for work submitted to other router replicas.
    poll_interval_s: float = Field(default=0.5, gt=0)
    # The job path's statements are prepared once per connection (asyncpg). Off behind PgBouncer in
    # transaction mode, where the next transaction may run on a connection that never prepared them.
    prepared_statements: bool = True
    # How the router calls the model replicas: Serve's gRPC transport between deployments ("grpc":
    # the arguments and the result go by value, no Ray object per call; what Serve's throughput-
    # optimized mode uses), or Ray actor calls ("actor"). gRPC needs the router to reach each
    # model replica's own gRPC port (a free port on its node, as Ray's worker ports are).
    model_calls: Literal["grpc", "actor"] = "grpc"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Uploads (POST /v1/artifacts, /v1/jobs/multipart) may be larger: audio, images.
    max_upload_bytes: int = Field(default=200 * 1_048_576, ge=1024)
    # Retries: a failed attempt, or a run lost with its router, comes back after an exponential
    # backoff with jitter (retry_backoff_s, doubling, at most retry_backoff_max_s). A run lost to
    # infrastructure (the router died or stopped) costs no attempt; a job that loses its router
    # max_lost_attempts times fails with that reason (it may be what kills them).
    retry_backoff_s: float = Field(default=2.0, ge=0)
    retry_backoff_max_s: float = Field(default=120.0, ge=0)
    max_lost_attempts: int = Field(default=5, ge=1)
    # How long a job may wait inside a model replica for a free slot (a one-at-a-time model busy
    # with earlier jobs); its timeout_s counts from when its work starts there.
    replica_queue_timeout_s: float = Field(default=1800.0, gt=0)
    # Queued jobs of an app that is no longer configured (or that no backend here runs) fail after
    # this long, so their waits end; the grace covers a rolling config update.
    unconfigured_app_grace_s: float = Field(default=300.0, ge=0)
    # How long an Idempotency-Key keeps answering with its job (JobStore.submit idempotency_ttl_s).
    idempotency_ttl_s: float = Field(default=86_400.0, gt=0)
    # Event streams (SSE, streamed chat) per router replica; beyond: 503 + Retry-After.
    # None: half of max_ongoing_requests, so streams never starve submits.
    max_streams: int | None = Field(default=None, ge=1)
    # A stream ends after this long with a `retry:` hint; clients resume with Last-Event-ID.
    max_stream_s: float = Field(default=1800.0, gt=0)
    # Redis connect/command timeout: a slow Redis is a timeout, not a hang.
    redis_timeout_s: float = Field(default=2.0, gt=0)
    # Retention: terminal jobs finished longer ago than this are deleted with their artifacts and
    # event streams (None: kept for ever). `gpu-orch prune` does it on demand.
    retention_days: float | None = Field(default=30.0, gt=0)
    # The router that holds the prune lock deletes prune_batch rows per short transaction, pausing
    # between batches, every prune_interval_s: intake never waits on it.
    prune_batch: int = Field(default=500, ge=1, le=10_000)
    prune_interval_s: float = Field(default=600.0, gt=0)
    # API keys (docs/operations.md): on, off, or auto: on unless Serve's HTTP proxy listens on a
    # loopback address only (the local demo runs open, and `gpu-orch up` says so).
    auth: Literal["auto", "on", "off"] = "auto"
    webhooks: "WebhookSpec" = Field(default_factory=lambda: WebhookSpec())


class WebhookSpec(BaseModel):
    """Job webhooks (core/webhooks.py): where they may go, and how long a delivery is retried."""

    model_config = ConfigDict(extra="forbid")

    # Hosts, or networks (CIDR), a webhook may reach on the cluster's own networks (private,
    # loopback, link-local), which are refused otherwise: the router's neighbours are not for callers.
    allow: list[str] = Field(default_factory=list)
    # Loopback receivers: unset, allowed when Serve's proxy listens on loopback only (the local demo).
    allow_loopback: bool | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=30)  # one POST (well inside a sender's 60 s claim)
    retry_for_s: float = Field(default=3600.0, ge=0)  # after the event; then given up (recorded on the job)
    backoff_s: float = Field(default=2.0, gt=0)  # doubling between tries, at most backoff_max_s
    backoff_max_s: float = Field(default=300.0, gt=0)
    # A sender looks for due deliveries when told (Postgres NOTIFY) and at least this often (retries).
    poll_s: float = Field(default=5.0, gt=0)


class GpuPoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    vram_gb: float = Field(gt=0)
    node_type: str = ""
    # Accounting only (the demo's): no physical GPU behind it; the models placed on it run on CPU.
    virtual: bool = False


class WarmSpec(BaseModel):
    """The warm tier (docs/warm.md): a model the arbiter takes off the GPU parks (its replica stays,
    its weights in the node's host memory) instead of stopping, so its next load is a copy back."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # Host memory the parked models of one node may hold. null: host_budget_share of the node's RAM.
    host_budget_gb: float | None = Field(default=None, gt=0)
    host_budget_share: float = Field(default=0.4, gt=0, le=0.9)
    # Parked copies go (least recently used first) when the node's free RAM falls below this.
    min_free_gb: float = Field(default=2.0, ge=0)
    # VRAM a parked replica still holds on its GPU (its process's CUDA context), counted against it.
    parked_vram_gb: float = Field(default=0.5, ge=0)


class ArbiterSpec(BaseModel):
    """The GPU arbiter (docs/arbiter.md). Disabled: every model keeps `num_replicas` replicas."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    idle_ttl_s: float = Field(default=300.0, ge=0)
    max_wait_s: float = Field(default=60.0, gt=0)
    min_resident_s: float = Field(default=30.0, ge=0)
    # Under overload, swap-ins take at most this share of a GPU's time (docs/arbiter.md); null: no
    # budget (swap as often as the wait bound asks). The allowance saved over swap_window_s pays for
    # rare swaps at once.
    swap_budget: float | None = Field(default=0.08, gt=0, le=1)
    swap_window_s: float = Field(default=150.0, gt=0)
    # No model with queued work waits for the GPU longer than this before it goes first, whatever
    # the priorities and the swap budget (docs/arbiter.md); null: 10 x max_wait_s.
    starvation_s: float | None = Field(default=None, gt=0)
    tick_s: float = Field(default=0.25, gt=0)
    # While nothing is queued, running, loading or stopping: how often it looks (a submit to this
    # router wakes it at once; one to another replica waits at most this long for its first load).
    idle_tick_s: float = Field(default=2.0, gt=0, le=5.0)  # a decision older than 10 s is not acted on
    # GPU memory pools. Omitted: discovered from the Ray cluster, one pool per GPU node, its size
    # from the node's `vram_gb` custom resource (or default_gpu_vram_gb).
    gpus: list[GpuPoolSpec] | None = None
    default_gpu_vram_gb: float = Field(default=24.0, gt=0)
    # When set, each model replica also requests this custom resource in GB of its VRAM, so Ray's
    # scheduler itself refuses to co-locate models that do not fit (nodes declare their VRAM).
    vram_resource: str | None = None
    # Once a model has loaded and run a job on a GPU, pack it by its measured peak GPU memory
    # (heartbeats' vram_peak_gb) times 1 + vram_margin instead of its declared vram_gb.
    vram_from_peak: bool = True
    vram_margin: float = Field(default=0.15, ge=0, le=2)
    warm: WarmSpec = Field(default_factory=WarmSpec)

    @model_validator(mode="after")
    def _warm_needs_shares(self) -> "ArbiterSpec":
        # A parked replica keeps the custom resource Ray gave it: the next model could not start.
        if self.warm.enabled and self.vram_resource:
            raise ValueError("warm.enabled: a parked replica keeps its vram_resource "
                             f"({self.vram_resource!r}) and would block the next model; unset vram_resource")
        return self


class ReplicateSpec(BaseModel):
    """The Replicate account. The token is read from the environment (token_env) or a file (a
    mounted secret), never from this config, and never logged or stored."""

    model_config = ConfigDict(extra="forbid")

    token_env: str = "REPLICATE_API_TOKEN"
    token_file: str | None = None
    base_url: str | None = Field(default=None, description="default: the replicate client's (api.replicate.com)")


class ModalSpec(BaseModel):
    """Modal credentials: the SDK's token (MODAL_TOKEN_ID / MODAL_TOKEN_SECRET) for deployed
    classes, and proxy-auth tokens (Modal-Key / Modal-Secret headers) for web endpoints."""

    model_config = ConfigDict(extra="forbid")

    token_id_env: str = "MODAL_TOKEN_ID"
    token_secret_env: str = "MODAL_TOKEN_SECRET"
    proxy_key_env: str = "MODAL_PROXY_KEY"
    proxy_secret_env: str = "MODAL_PROXY_SECRET"
    token_file: str | None = Field(default=None, description="YAML/JSON with the four values, by env name")


class CloudSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicate: ReplicateSpec = Field(default_factory=ReplicateSpec)
    modal: ModalSpec = Field(default_factory=ModalSpec)


class DemoProfile(BaseModel):
    """What the demo profile (`gpu-orch up --demo`) runs the arbiter against."""

    model_config = ConfigDict(extra="forbid")

    # A virtual GPU of this many GB: the arbiter's accounting only (the tiny models run on CPU, each
    # with its real vram_gb and load_s), so a machine without a GPU shows models loaded, evicted,
    # scaled to zero and swapped. Unset: the arbiter is off in the demo and every model stays loaded.
    virtual_gpu_gb: float | None = Field(default=None, gt=0)
    # `arbiter` settings the demo overrides (short timers, so that swaps happen within minutes).
    arbiter: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _arbiter_fields(self) -> "DemoProfile":
        keys = set(self.arbiter)
        unknown = sorted((keys - set(ArbiterSpec.model_fields)) | (keys & {"enabled", "gpus", "vram_resource"}))
        if unknown:
            raise ValueError(f"arbiter: {unknown} cannot be set here (the arbiter's timers and budgets can; "
                             "virtual_gpu_gb turns it on and sets its GPU)")
        try:
            ArbiterSpec.model_validate(self.arbiter)
        except ValidationError as e:
            raise ValueError(format_pydantic_error(e, "arbiter")) from None
        return self


class OrchestratorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    apps: list[AppSpec]
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    # real: the models as configured. demo: each model with a `demo` block runs its tiny untrained
    # version on CPU (see apply_profile).
    profile: Literal["real", "demo"] = "real"
    demo: DemoProfile = Field(default_factory=DemoProfile)
    router: RouterSpec = Field(default_factory=RouterSpec)
    arbiter: ArbiterSpec = Field(default_factory=ArbiterSpec)
    cloud: CloudSpec = Field(default_factory=CloudSpec)
    costs: CostsSpec = Field(default_factory=CostsSpec)
    # Overrides for URLs otherwise taken from the environment (DATABASE_URL / REDIS_URL,
    # GPU_ORCH_ARTIFACTS; artifacts default to GPU_ORCH_HOME/artifacts).
    database_url: str | None = None
    redis_url: str | None = None
    artifacts_url: str | None = None
    # Logs of the router and the model replicas: text, or one JSON object per line; either way every
    # line about a job carries its job_id (gpu_orchestrator/logs.py).
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _cross(self) -> "OrchestratorConfig":
        ids: set[str] = set()
        problems = []
        for i, app in enumerate(self.apps):
            if app.id in ids:
                problems.append(f"apps[{i}].id: duplicate app id {app.id!r}")
            ids.add(app.id)
        aliases: dict[str, str] = {}
        for i, app in enumerate(self.apps):
            for alias in app.aliases:
                if alias in ids or alias in aliases:
                    problems.append(f"apps[{i}].aliases: {alias!r} is already "
                                    f"{'an app id' if alias in ids else 'an alias of ' + repr(aliases[alias])}")
                aliases.setdefault(alias, app.id)
            if app.kind == AppKind.local and app.deployment not in self.models:
                problems.append(
                    f"apps[{i}].deployment: {app.deployment!r} is not a model in 'models' "
                    f"(known: {sorted(self.models)})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def app(self, app_id: str) -> AppSpec | None:
        return next((a for a in self.apps if a.id == app_id), None)

    def model_vram_gb(self, name: str) -> float:
        return self.models[name].vram_gb


DEMO_LABEL = "tiny untrained demo"
VIRTUAL_GPU_ID = "virtual-gpu0"  # the demo's GPU: its name says it in every table and metric


def parse_config(args: dict[str, Any]) -> OrchestratorConfig:
    try:
        return apply_profile(OrchestratorConfig.model_validate(args))
    except ValidationError as e:
        raise ConfigError("invalid orchestrator config:\n" + format_pydantic_error(e, "args")) from None


def apply_profile(cfg: OrchestratorConfig) -> OrchestratorConfig:
    """The demo profile: models with a `demo` block take its init/runtime_env and no GPU share; their
    apps are labelled. With `demo.virtual_gpu_gb` the arbiter runs against one virtual GPU of that
    size (each model keeps its vram_gb and load_s; demo.arbiter's timers), else it is off and no model
    declares VRAM. Idempotent: parsing a config that already had it applied changes nothing."""
    if cfg.profile != "demo":
        return cfg
    cfg = cfg.model_copy(deep=True)
    virtual = cfg.demo.virtual_gpu_gb
    demo_models = set()
    for name, m in cfg.models.items():
        if m.demo is None:
            continue
        demo_models.add(name)
        m.init = dict(m.demo.init)
        if m.demo.runtime_env is not None:
            m.runtime_env = m.demo.runtime_env
        m.num_gpus, m.demo = 0.0, None
        if virtual is None:
            m.vram_gb = 0.0
        m.pin = None  # the one virtual GPU (or none) is every model's
    for app in cfg.apps:
        if app.deployment in demo_models:
            if DEMO_LABEL not in app.name:
                app.name = f"{app.name or app.id} ({DEMO_LABEL})"
    if virtual is None:
        cfg.arbiter.enabled = False
        return cfg
    cfg.arbiter = ArbiterSpec.model_validate({
        **cfg.arbiter.model_dump(), **cfg.demo.arbiter, "enabled": True, "vram_resource": None,
        "gpus": [{"id": VIRTUAL_GPU_ID, "vram_gb": virtual, "virtual": True}]})
    return cfg
