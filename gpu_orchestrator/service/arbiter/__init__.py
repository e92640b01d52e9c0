"""The GPU arbiter's service side: the loop that leads or follows (loop.py), the ports it reads the
world through (ports.py), each model's lifecycle track (tracks.py) and the views it builds for the
pure policy in core/policy.py and for the API (views.py)."""
