"""Platform use: the pipeline as a Prefect deployment on a cron schedule.

Schedules fire only against a Prefect server (`prefect server start`, with PREFECT_API_URL pointing at it);
the ephemeral mode that `python -m flows run` uses runs no scheduler (reference/stack.md §2.5)."""

from __future__ import annotations

from flows.pipeline import pipeline


def deployment(preset: str, overrides: list[str], cron: str, name: str):
    """The RunnerDeployment (inspectable without serving)."""
    return pipeline.to_deployment(name=name, cron=cron, parameters={"preset": preset, "overrides": list(overrides)},
                                  tags=["anyflow", preset])


def serve_pipeline(preset: str, overrides: list[str], cron: str, name: str) -> None:
    """Register the deployment and run its schedule until interrupted."""
    from prefect import serve

    serve(deployment(preset, overrides, cron, name))
