"""The Grafana dashboard (deploy/grafana/gpu-orchestrator.json) and the Prometheus scrape config
(deploy/prometheus/prometheus.yml), offline: the JSON is a well-formed dashboard, every query names
only metrics the stack exports (ours from serve/metrics.py as Ray exports them, and Ray's own that
tests/serve/test_metrics_dashboard.py sees on a live scrape), every variable it uses is defined, and
promtool (Debian's prometheus package) parses every query and the scrape config.

The helpers here (dashboard_exprs, metric_names, dashboard_metrics) are what the serve test uses too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "gpu-orchestrator.json"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# Ray's own metrics the dashboard charts (present on the demo stack's scrape: the serve test checks).
RAY_METRICS = {
    "ray_serve_deployment_replica_healthy",
    "ray_serve_autoscaling_target_replicas",
    "ray_serve_num_deployment_http_error_requests_total",
    "ray_serve_deployment_processing_latency_ms_bucket",
}

# PromQL's functions, aggregation operators and keywords: everything an identifier in a query can be
# besides a metric name (https://prometheus.io/docs/prometheus/latest/querying/functions/).
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar",
    "histogram_sum", "holt_winters", "double_exponential_smoothing", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt", "time",
    "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time", "mad_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh",
    "sin", "sinh", "tan", "tanh", "deg", "rad", "pi",
}
PROMQL_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                       "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                   "offset", "atan2", "inf", "nan", "le"}
NOT_METRICS = PROMQL_FUNCTIONS | PROMQL_AGGREGATIONS | PROMQL_KEYWORDS
# Grafana's built-in variables; and what each interval stands for when a query goes to promtool.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h", "__range_s": "3600",
                    "__interval_ms": "30000", "__all": ""}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(d: dict) -> list[dict]:
    """Every panel, rows' collapsed panels included."""
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels") or [])
    return out


def dashboard_exprs(d: dict) -> list[str]:
    """Every PromQL query of the dashboard's panels."""
    return [t["expr"] for p in panels(d) for t in p.get("targets") or []]


def variable_queries(d: dict) -> list[str]:
    out = []
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left of its identifiers once strings,
    label matchers, ranges, grouping clauses, functions, aggregations and keywords are taken out."""
    e = _STRING.sub('""', expr)
    e = re.sub(r"\{[^{}]*\}", " ", e)  # label matchers (no braces left inside once strings are gone)
    e = re.sub(r"\[[^\[\]]*\]", " ", e)  # range and subquery selectors
    e = _GROUPING.sub(" ", e)
    names = set()
    for m in _IDENT.finditer(e):
        name = m.group(1)
        rest = e[m.end():].lstrip()
        if name in NOT_METRICS or rest.startswith("("):  # a function call or an aggregation
            continue
        names.add(name)
    return names


def variable_query_metrics(query: str) -> set[str]:
    """The metric of a Grafana variable query (label_values(metric{...}, label), query_result(...))."""
    m = re.match(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)", query)
    if m:
        return {m.group(1)}
    m = re.match(r"\s*(?:query_result|metrics)\((.*)\)\s*$", query, re.S)
    return metric_names(m.group(1)) if m else set()


def dashboard_metrics(d: dict | None = None) -> set[str]:
    d = d or load_dashboard()
    out = set()
    for e in dashboard_exprs(d):
        out |= metric_names(e)
    for q in variable_queries(d):
        out |= variable_query_metrics(q)
    return out


def orchestrator_metrics(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, ...]]:
    """What ServeMetrics defines, as Prometheus sees it through Ray (ray_ prefix; counters _total;
    histograms _bucket, _sum, _count): exported name -> the metric's tag keys. ServeMetrics is built
    over a stand-in for ray.serve.metrics that records each definition."""
    defined: list[tuple[str, str, tuple[str, ...]]] = []

    def kind(k: str):
        class Metric:
            def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] = (), **kw):
                assert description, f"{name} has no description"
                defined.append((k, name, tuple(tag_keys)))
        return Metric

    fake = types.ModuleType("ray.serve")
    fake.metrics = types.SimpleNamespace(Counter=kind("counter"), Gauge=kind("gauge"), Histogram=kind("histogram"))
    monkeypatch.setitem(sys.modules, "ray.serve", fake)
    from gpu_orchestrator.serve.metrics import ServeMetrics

    ServeMetrics()
    out = {}
    for k, name, tags in defined:
        suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}[k]
        for s in suffixes:
            out[f"ray_{name}{s}"] = tags
    return out


# -- the dashboard ----------------------------------------------------------------------------------

def test_metric_names_are_extracted_from_promql():
    assert metric_names('histogram_quantile(0.99, sum by (le, app_id) (rate(ray_x_bucket{a=~"$app", '
                        'b="rate(y)"}[$__rate_interval])))') == {"ray_x_bucket"}
    assert metric_names("sum(rate(a_total[5m])) / sum without (le) (rate(b_total[5m] offset 1h)) * 3600") == {
        "a_total", "b_total"}
    assert metric_names('max by (model) (m{state="x"} or 2 * m{state="y"}) > bool 0 and on (gpu) n') == {"m", "n"}
    assert metric_names('sum by (backend)(increase(c{app_id=~"a|b"}[$__range])) unless ignoring(x) d') == {"c", "d"}
    assert metric_names("topk(5, up) + 1e3 - 0.5") == {"up"}
    assert variable_query_metrics('label_values(ray_q{application=~"$application"}, app_id)') == {"ray_q"}


def test_dashboard_is_a_well_formed_grafana_dashboard():
    d = load_dashboard()
    assert d["title"] and d["uid"] == "gpu-orchestrator" and d["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    templating = {v["name"]: v for v in d["templating"]["list"]}
    assert templating["datasource"]["type"] == "datasource" and templating["datasource"]["query"] == "prometheus"
    assert {"app", "application"} <= set(templating)
    charts = [p for p in panels(d) if p["type"] != "row"]
    assert len(charts) >= 15
    for p in charts:
        assert p["title"] and p.get("description"), p
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        targets = p.get("targets") or []
        assert targets, f"panel {p['title']!r} has no queries"
        assert len({t["refId"] for t in targets}) == len(targets), p["title"]
        for t in targets:
            assert t["expr"].strip() and t["datasource"]["uid"] == "${datasource}", p["title"]
            assert metric_names(t["expr"]), f"{p['title']}: no metric in {t['expr']!r}"
    # What the issue asks to see, each on a panel of its own.
    text = json.dumps([[p["title"], [t["expr"] for t in p["targets"]]] for p in charts])
    for wanted in ("ray_gpu_orch_queue_depth", "ray_gpu_orch_queue_oldest_wait_seconds", "ray_gpu_orch_job_transitions_total",
                   "histogram_quantile(0.5", "histogram_quantile(0.99", "ray_gpu_orch_model_state",
                   "ray_gpu_orch_model_loads_total", "ray_gpu_orch_model_evictions_total", "ray_gpu_orch_model_load_seconds",
                   "ray_gpu_orch_gpu_vram_held_gb", "ray_gpu_orch_gpu_vram_budget_gb", 'backend!=\\"local\\"',
                   "ray_gpu_orch_cost_usd_total"):
        assert wanted in text, wanted
    # Ray's own Serve dashboards are linked beside ours (by the uids Ray generates them with), not copied.
    assert {"/d/rayServeDashboard", "/d/rayServeDeploymentDashboard"} <= {link["url"] for link in d["links"]}


def test_every_variable_used_is_defined():
    d = load_dashboard()
    defined = {v["name"] for v in d["templating"]["list"]} | set(GRAFANA_BUILTINS)
    used = set()
    texts = dashboard_exprs(d) + variable_queries(d) + [json.dumps(p.get("datasource")) for p in panels(d)]
    texts += [json.dumps(t.get("datasource")) for p in panels(d) for t in p.get("targets") or []]
    for text in texts:
        for m in _VARIABLE.finditer(text):
            used.add(next(g for g in m.groups() if g))
    assert used - defined == set(), f"undefined variables: {used - defined}"
    assert {"datasource", "app", "application"} <= used  # and each defined one is used


def test_every_query_names_a_metric_the_stack_exports(monkeypatch):
    ours = orchestrator_metrics(monkeypatch)
    used = dashboard_metrics()
    unknown = used - set(ours) - RAY_METRICS
    assert not unknown, f"the dashboard queries metrics nothing exports: {sorted(unknown)}"
    assert RAY_METRICS <= used  # the list is what the dashboard charts of Ray's, no more
    # Every metric of ours is charted (a histogram by its buckets, or its sum and count).
    charted = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    missing = {re.sub(r"_(bucket|sum|count)$", "", n) for n in ours} - charted
    assert not missing, f"metrics not on the dashboard: {sorted(missing)}"


def test_docs_list_every_metric(monkeypatch):
    ops = (ROOT / "docs" / "operations.md").read_text()
    section = ops[ops.index("## Dashboards"):]
    names = {re.sub(r"^ray_|_(total|bucket|sum|count)$", "", n) for n in orchestrator_metrics(monkeypatch)}
    missing = [n for n in sorted(names) if f"`{n}`" not in section]
    assert not missing, f"docs/operations.md#dashboards does not list {missing}"


# -- promtool ------------------------------------------------------------------------------------------

def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:  # .ci/run installs it (Debian's prometheus package)
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def grafana_to_promql(expr: str) -> str:
    """A panel's query as Prometheus would get it from Grafana: interval variables replaced by
    durations, the others (inside label matchers' regexes) by `.*`."""
    def sub(m: re.Match) -> str:
        name = next(g for g in m.groups() if g)
        return GRAFANA_BUILTINS.get(name) or ".*"
    return _VARIABLE.sub(sub, expr)


def test_promtool_parses_every_query(tmp_path):
    tool = promtool()
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)}
             for i, e in enumerate(dashboard_exprs(load_dashboard()))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout + r.stderr


def test_promtool_checks_the_scrape_config():
    tool = promtool()
    r = subprocess.run([tool, "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (ray,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "ray"]
    assert ray["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
