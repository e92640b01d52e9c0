"""Serve application builders: build_app(args) -> Application, usable from YAML import_path and Python."""
