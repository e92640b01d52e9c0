"""Old import path of the model base class, kept for model classes written against it; the code
lives in gpu_orchestrator.models.base."""

from gpu_orchestrator.models.base import (JobCancelled, JobContext, JobTimeout, ModelDeployment, ModelLoadError,
                                          SlotTimeout)

__all__ = ["JobCancelled", "JobContext", "JobTimeout", "ModelDeployment", "ModelLoadError", "SlotTimeout"]
