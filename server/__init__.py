"""OpenAI-compatible HTTP server and the `anymodel` CLI.

Kept import-light on purpose: `anymodel --help` must not pay for torch. `build_app` lives in
`anymodel.server.app`.
"""
