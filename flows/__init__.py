"""Prefect flows over the `vatt` library: thin orchestration, no ML of their own.

    ingest    raw source (or the generated default dataset) -> shards under data/, versioned
    pretrain  Ray Train pretraining of a config, resumable by run name
    evaluate  downstream evaluation of a checkpoint, report, promotion gate
    retrain   the parent: data (pull a version or ingest) -> pretrain -> evaluate -> promote
    sweep     a Ray Tune sweep of pretraining runs over a search space of tuning/

Deployments (scheduled retraining, the others on demand) are declared in the project's
`prefect.yaml` and served by `vatt serve`; `vatt pipeline` runs `retrain` once on Prefect's
ephemeral API. The library's `vatt.*` log records reach each run's logs in the Prefect UI.
"""

from vatt_flows.logs import attach_library_logs

attach_library_logs()
