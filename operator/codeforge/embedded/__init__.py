"""Embedded mode (`codeforge run`): a Workflow and its AgentPools in one process, or against Redis.

Modules: `manifest` (read the YAML), `agents` (in-process agents or `codeforge-agent` processes), `progress`
(the live view), `command` (the CLI command). Import them directly; this package imports nothing heavy so
that registering the command keeps `codeforge --help` fast.
"""
