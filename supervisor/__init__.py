"""The supervisor: the agent loop, runners, model routing, workspaces and display."""
