"""Test support shared by the test modules (and the benchmarks): one copy of each helper.

- ``projects``: project directories and their features.json
- ``pg``: a throwaway PostgreSQL server started from the installed binaries
- ``harness``: `python agent_manager.py` run against the scripted model (the ``make_run`` fixture)
- ``runners``: a scripted in-process AgentRunner for supervisor tests
- ``supervise``: the in-process supervisor around a queue and a runner
"""
