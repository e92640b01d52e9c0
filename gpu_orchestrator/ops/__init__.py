"""The operator's tooling behind `gpu-orch`: the local stack (`stack`: the Ray head, Serve, the
embedded Postgres and Redis of `embedded`, the Ray token of `ray_auth`), the KubeRay manifest
(`kuberay`), the `new-app` scaffold and its config edits (`scaffold`, `config_edit`) and the seed
import (`seed`). Plain functions that return results; the click commands in cli/ print them."""
