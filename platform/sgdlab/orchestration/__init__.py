"""Orchestration (the only package that imports ray): connect, plan, tasks, scheduler."""
