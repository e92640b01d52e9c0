"""Ray Serve deployment classes. Undecorated: serve_apps builders wrap them with serve.deployment()."""
