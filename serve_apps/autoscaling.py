"""serve_config.yaml: autoscaling_policy.policy_function serve_apps.autoscaling:arbiter_policy (gpu_orchestrator.serve.autoscaling)."""

from gpu_orchestrator.serve.autoscaling import arbiter_policy

__all__ = ["arbiter_policy"]
