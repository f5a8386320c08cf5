"""The web dashboard: the queue as a page that updates itself, and the people's verbs as buttons.

Rooms: ``server`` (options, the listening socket, uvicorn in the foreground or in a thread),
``app`` (the Starlette routes, the guard for tokens, hosts and CSRF, server-sent events),
``data`` (typed snapshots read through FeatureQueue), ``rendering`` (Jinja2 templates, autoescaped),
``svg`` (the dependency graph), and the shipped ``templates/`` and ``static/`` files.

Nothing here imports the run's machinery (the SDK, mcp, apscheduler): `agent-manager dashboard`
starts in well under a second and can watch a run on another host that shares PostgreSQL.
"""
