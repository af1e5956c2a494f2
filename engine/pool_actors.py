"""The actor classes of the run's generation and scoring pools (``engine.pipeline.ModelPools``).

Their class names are how Ray's actor table, the dashboard and the multi-node tests tell the two pools
apart. They live apart from ``engine/pipeline.py`` because an actor's process imports the module of its
class: there, a scoring actor would import the diffusion stack first (several seconds, on the cores the
run is starting on) though it never runs it.
"""

from __future__ import annotations

import numpy as np

from engine.refresh_stages import GenerateCandidates
from engine.score import ScoreStage


class GenerateCandidatesActor(GenerateCandidates):
    """A generation actor of the run's pool."""

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self(batch)


class ScoreStageActor(ScoreStage):
    """A scoring actor of the run's pool."""

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self(batch)
