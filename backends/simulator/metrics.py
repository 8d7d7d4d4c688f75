"""vLLM's Prometheus metrics, same names, labels and buckets (vLLM 0.32, V1 engine).

Each simulator instance owns a registry (several simulators can live in one test process).
Gauges are read from the engine at scrape time; counters are bumped once per engine step;
histograms are observed per request (TTFT, e2e, queue time, token counts) and per token
(inter-token latency), as vLLM does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ctxroute.backends.simulator.engine import EngineCore, SimRequest
from ctxroute.backends.simulator.profiles import Profile
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


def token_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to max_model_len."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return tuple(out)
            out.append(float(value))
        exponent += 1


def cache_config_labels(profile: Profile) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info``: all of vLLM 0.32's keys, simulated values."""
    return {
        "_block_size_resolved": "True",
        "block_size": str(profile.block_size),
        "cache_dtype": "auto",
        "cache_hit_alignment_tokens": "None",
        "effective_attention_block_size": str(profile.block_size),
        "enable_mamba_shared_prefix_checkpoint": "False",
        "enable_prefix_caching": str(profile.enable_prefix_caching),
        "gpu_memory_utilization": "0.9",
        "hash_block_size": "None",
        "is_attention_free": "False",
        "kv_cache_dtype_skip_layers": "[]",
        "kv_cache_layout": "None",
        "kv_cache_max_concurrency": f"{profile.kv_capacity_tokens / profile.max_model_len:.1f}",
        "kv_cache_memory_bytes": str(profile.kv_capacity_tokens * profile.kv_bytes_per_token),
        "kv_cache_size_tokens": str(profile.kv_capacity_tokens),
        "kv_offloading_backend": "native",
        "kv_offloading_size": "None",
        "kv_sharing_fast_prefill": "False",
        "mamba_block_size": "None",
        "mamba_cache_dtype": "auto",
        "mamba_cache_mode": "none",
        "mamba_page_size_padded": "None",
        "mamba_ssm_cache_dtype": "float32",
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(profile.num_blocks),
        "num_gpu_blocks_override": "None",
        "prefix_cache_retention_interval": "0",
        "prefix_caching_hash_algo": "sha256",
        "prefix_match_unit": "None",
        "replayssm_buffer_len": "16",
        "skip_page_size_padded": "None",
        "sliding_window": "None",
        "swa_bounded_replay": "True",
        "use_kda_recoverssm": "False",
        "use_replayssm": "False",
        "user_specified_block_size": "False",
    }


class _EngineGauges(Collector):
    def __init__(self, engine: EngineCore, labels: dict[str, str],
                 kv_usage: Callable[[], float]) -> None:  # fmt: skip
        self._engine = engine
        self._labels = labels
        self._kv_usage = kv_usage

    def collect(self) -> Iterable[GaugeMetricFamily]:
        names = list(self._labels)
        values = list(self._labels.values())
        engine = self._engine
        for name, doc, value in (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                len(engine.running),
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                len(engine.waiting),
            ),
            (
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                self._kv_usage(),
            ),
        ):
            family = GaugeMetricFamily(name, doc, labels=names)
            family.add_metric(values, float(value))
            yield family


class VllmMetrics:
    def __init__(self, engine: EngineCore, profile: Profile, model_name: str,
                 kv_usage: Callable[[], float] | None = None) -> None:  # fmt: skip
        self.registry = CollectorRegistry()
        labels = {"engine": "0", "model_name": model_name}
        names = list(labels)
        reg = self.registry
        reg.register(_EngineGauges(engine, labels, kv_usage or engine.kv_usage))

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=reg)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=reg)

        self.prompt_tokens = counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed."
        ).labels(**labels)
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        ).labels(**labels)
        self.preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        ).labels(**labels)
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        ).labels(**labels)
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        ).labels(**labels)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=reg,
        )
        self.success = {r: success.labels(**labels, finished_reason=r) for r in FINISHED_REASONS}
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        ).labels(**labels)
        self.itl = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        ).labels(**labels)
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            LATENCY_BUCKETS,
        ).labels(**labels)
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            LATENCY_BUCKETS,
        ).labels(**labels)
        tokens = token_buckets(profile.max_model_len)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens
        ).labels(**labels)
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tokens
        ).labels(**labels)
        # vLLM labels this one by engine only (no model_name)
        info = Info(
            "vllm:cache_config",
            "Information of the LLMEngine CacheConfig",
            ["engine"],
            registry=reg,
        )
        info.labels(engine="0").info(cache_config_labels(profile))
        self._engine = engine
        self._seen = (0, 0, 0, 0, 0)

    def after_step(self, now: float, progressed: list[SimRequest]) -> None:
        """Counter deltas since the last step, inter-token latency, finished requests."""
        c = self._engine.counters
        current = (
            c.prompt_tokens,
            c.generation_tokens,
            c.preemptions,
            c.prefix_cache_queries,
            c.prefix_cache_hits,
        )
        seen = self._seen
        for metric, new, old in zip(
            (
                self.prompt_tokens,
                self.generation_tokens,
                self.preemptions,
                self.prefix_queries,
                self.prefix_hits,
            ),
            current,
            seen,
            strict=True,
        ):
            if new != old:
                metric.inc(new - old)
        self._seen = current
        self.drain_finished()

    def first_token(self, req: SimRequest) -> None:
        if req.first_token_at is not None:
            self.ttft.observe(req.first_token_at - req.arrival)

    def drain_finished(self) -> None:
        finished = self._engine.finished
        if not finished:
            return
        for req in finished:
            self.success[req.finish_reason or "error"].inc()
            if req.finish_reason == "abort":
                continue
            end = req.finished_at or req.arrival
            self.e2e.observe(end - req.arrival)
            if req.scheduled_at is not None:
                self.queue_time.observe(req.scheduled_at - req.arrival)
            self.request_prompt_tokens.observe(req.prompt_tokens)
            self.request_generation_tokens.observe(req.output_tokens)
        finished.clear()
