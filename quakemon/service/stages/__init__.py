"""The pipeline stages as processes joined by ZeroMQ PUSH/PULL: ingest, preprocess, inference.

    ingest      SeedLink source -> station windows -> PUSH (binds pipeline.windows_endpoint)
    preprocess  PULL (connects windows) -> the one batched transform -> PUSH (connects spectra)
    inference   PULL (binds pipeline.spectra_endpoint) -> micro-batches -> HybridViT -> trigger -> PUB

Queues are bounded at every hop and overflow drops the *oldest* windows, counted (`dropped_*`) and reported
in the heartbeat: a stage that falls behind never blocks the SeedLink reading loop. ZeroMQ's own queues are
kept tiny (HWM 2) so that queueing, and the drop decision, happen in our queues (`pipeline.queue_hwm` windows
per stage).

Each stage is a `Stage` (startup -> main loop -> shutdown, steered by a stop flag) that reports a status
message twice a second on the control channel: to the supervisor (liveness for the systemd watchdog,
readiness, counters for the metrics) and downstream beside the data, for the heartbeat. Every socket is owned
by the thread that created it. A stage started by the supervisor stops by itself when the supervisor
disappears (parent-death signal, and a parent-pid check). Test hooks: `quakemon.service.stages.faults`.
"""

from quakemon.service.config import STAGES
from quakemon.service.stages.common import EXIT_FATAL, Stage
from quakemon.service.stages.inference import InferenceStage
from quakemon.service.stages.ingest import IngestStage
from quakemon.service.stages.preprocess import PreprocessStage

__all__ = ["EXIT_FATAL", "STAGES", "InferenceStage", "IngestStage", "PreprocessStage", "Stage"]
