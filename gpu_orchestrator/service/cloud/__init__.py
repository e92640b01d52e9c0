"""Cloud fallback backends: the provider-neutral backend and its errors (backend.py), Replicate
(replicate.py) and Modal (modal.py) providers, inputs and outputs in our job shape (payload.py), and
the routing of a new job between local and the cloud (routing.py). The pure rules are in core/cloud.py;
the Modal app that runs our models on Modal is deploy/modal/modal_app.py."""
